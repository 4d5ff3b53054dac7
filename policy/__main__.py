"""The mlflow-platform policy pack: `pulumi preview --policy-pack policy` runs it.

The CLI runs this directory with its own virtualenv (policy/venv, see PulumiPolicy.yaml),
so the rules are imported as a top-level module from this directory. Constructing the
PolicyPack starts the analyzer's gRPC server and blocks: nothing else may import this file.
"""

from policies import POLICIES  # type: ignore[import-not-found]  # top-level only when the CLI runs the pack
from pulumi_policy import EnforcementLevel, PolicyPack

PolicyPack(
    name="mlflow-platform",
    # Each policy is mandatory on its own as well: a violation fails the preview and stops `pulumi up`.
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
