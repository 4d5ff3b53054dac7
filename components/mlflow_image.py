"""The MLflow server image, built from mlflow/."""

from __future__ import annotations

from typing import TypedDict

import pulumi
import pulumi_docker as docker

from components.context import StackContext
from components.mlflow_facts import BUILD_CONTEXT
from components.settings import ServerSettings


class MlflowImageArgs(TypedDict):
    stack: StackContext
    """The stack it belongs to; its tag names project and stack."""
    server: ServerSettings
    """The MLflow release, the Python base image, and whether to install only from mlflow/wheelhouse."""


class MlflowImage(pulumi.ComponentResource):
    """Builds mlflow/Dockerfile."""

    image: docker.Image
    image_name: pulumi.Output[str]
    repo_digest: pulumi.Output[str]

    def __init__(self, name: str, args: MlflowImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:image:MlflowImage", name, None, opts)
        stack, server = args["stack"], args["server"]
        self.image = stack.target.built_image(
            self,
            f"{name}-image",
            f"{stack.project}/mlflow:{server.mlflow_version}-{stack.stack}",
            BUILD_CONTEXT,
            {
                "BASE_IMAGE": server.base_image,
                "MLFLOW_VERSION": server.mlflow_version,
                "USE_WHEELHOUSE": "true" if server.use_wheelhouse else "",
            },
        )
        self.image_name = self.image.image_name
        # For a local build this is the image ID, which changes with every rebuild
        # that changes the image: containers that run it by this value get replaced.
        self.repo_digest = self.image.repo_digest
        self.register_outputs({"image_name": self.image_name, "repo_digest": self.repo_digest})
