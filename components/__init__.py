"""Component resources of the MLflow platform stack."""
