"""The MLflow server image, built from mlflow/."""

from __future__ import annotations

from typing import TypedDict

import pulumi
import pulumi_docker as docker

from components.context import StackContext
from components.mlflow_facts import BUILD_CONTEXT


class MlflowImageArgs(TypedDict):
    stack: StackContext
    """The stack it belongs to; its tag names project and stack."""
    mlflow_version: str
    """Exact MLflow release installed (MLFLOW_VERSION build argument)."""
    base_image: pulumi.Input[str]
    """Python base image (BASE_IMAGE build argument)."""
    use_wheelhouse: bool
    """Install only from mlflow/wheelhouse instead of the package index."""


class MlflowImage(pulumi.ComponentResource):
    """Builds mlflow/Dockerfile."""

    image: docker.Image
    image_name: pulumi.Output[str]
    repo_digest: pulumi.Output[str]

    def __init__(self, name: str, args: MlflowImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:image:MlflowImage", name, None, opts)
        stack = args["stack"]
        self.image = stack.target.built_image(
            self,
            f"{name}-image",
            f"{stack.project}/mlflow:{args['mlflow_version']}-{stack.stack}",
            BUILD_CONTEXT,
            {
                "BASE_IMAGE": args["base_image"],
                "MLFLOW_VERSION": args["mlflow_version"],
                "USE_WHEELHOUSE": "true" if args["use_wheelhouse"] else "",
            },
        )
        self.image_name = self.image.image_name
        # For a local build this is the image ID, which changes with every rebuild
        # that changes the image: containers that run it by this value get replaced.
        self.repo_digest = self.image.repo_digest
        self.register_outputs({"image_name": self.image_name, "repo_digest": self.repo_digest})
