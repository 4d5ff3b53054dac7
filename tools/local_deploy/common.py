"""What every part of the local deployer shares: the labels it marks resources with, its errors, its log."""

from __future__ import annotations

import sys
import threading

PROJECT_LABEL = "com.pulumi.project"
STACK_LABEL = "com.pulumi.stack"
# Marks what this deployer made. `down` removes only marked resources, so it never
# touches a stack of the same name that a real `pulumi up` created on this engine.
MANAGED_LABEL = "org.mlflow-platform.local-deploy"
# Marks a named volume a swarm task created (no Pulumi resource declares it): as `pulumi destroy`
# leaves such volumes on their node, `down` keeps them unless it purges.
NODE_VOLUME_LABEL = "org.mlflow-platform.local-deploy.node-volume"


class DeployError(RuntimeError):
    """The local deployment failed; the message names the resource and the reason."""


class UnsupportedInputError(DeployError):
    """The program set an input this test double does not implement."""


class UnsupportedResourceError(DeployError):
    """The program declared a resource type this test double does not implement."""


class AbortedError(DeployError):
    """A create stopped because another one failed; that other failure is the one to report."""


_LOG_LOCK = threading.Lock()


def log(message: str) -> None:
    """Progress goes to stderr: stdout's last line is the stack outputs as JSON.

    Creates run in several threads; the lock keeps their lines whole.
    """
    with _LOG_LOCK:
        print(f"local-deploy: {message}", file=sys.stderr, flush=True)
