"""The mlflow-platform policy pack: `pulumi preview --policy-pack policy` runs it.

The CLI runs this directory with its own virtualenv (policy/venv, see PulumiPolicy.yaml)
as a script, not as a package, while the pack's modules import each other as the package
`policy` (as the tests and mutmut import them). This directory is therefore registered as
that package, whatever its name, before the rules are imported. Constructing the
PolicyPack starts the analyzer's gRPC server and blocks: nothing else may import this file.
"""

import importlib.machinery
import importlib.util
import sys
from pathlib import Path

from pulumi_policy import EnforcementLevel, PolicyPack

_PACKAGE = importlib.machinery.ModuleSpec("policy", None, is_package=True)
_PACKAGE.submodule_search_locations = [str(Path(__file__).resolve().parent)]
sys.modules["policy"] = importlib.util.module_from_spec(_PACKAGE)

from policy.policies import POLICIES  # noqa: E402 - the package exists only from here on

PolicyPack(
    name="mlflow-platform",
    # Each policy is mandatory on its own as well: a violation fails the preview and stops `pulumi up`.
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
