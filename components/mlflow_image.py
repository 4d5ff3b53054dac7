"""The MLflow server image, built locally from mlflow/."""

from __future__ import annotations

from typing import TypedDict

import pulumi
import pulumi_docker as docker

# Relative to the project directory, where `pulumi up` runs: an absolute path
# would differ per machine and show as a change in every teammate's preview.
BUILD_CONTEXT = "./mlflow"


class MlflowImageArgs(TypedDict):
    image_name: pulumi.Input[str]
    """Local tag, naming project, stack and MLflow version."""
    mlflow_version: pulumi.Input[str]
    """Exact MLflow release installed (MLFLOW_VERSION build argument)."""
    base_image: pulumi.Input[str]
    """Python base image (BASE_IMAGE build argument)."""
    use_wheelhouse: bool
    """Install only from mlflow/wheelhouse instead of the package index."""


class MlflowImage(pulumi.ComponentResource):
    """Builds mlflow/Dockerfile; never pushed."""

    image: docker.Image
    image_name: pulumi.Output[str]
    repo_digest: pulumi.Output[str]

    def __init__(self, name: str, args: MlflowImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("mlflow-platform:image:MlflowImage", name, None, opts)
        self.image = docker.Image(
            f"{name}-image",
            image_name=args["image_name"],
            build=docker.DockerBuildArgs(
                context=BUILD_CONTEXT,
                # Relative to the project, not the context, since pulumi-docker 4.0.1
                # (https://github.com/pulumi/pulumi-docker/releases/tag/v4.0.1).
                dockerfile=f"{BUILD_CONTEXT}/Dockerfile",
                args={
                    "BASE_IMAGE": args["base_image"],
                    "MLFLOW_VERSION": args["mlflow_version"],
                    "USE_WHEELHOUSE": "true" if args["use_wheelhouse"] else "",
                },
            ),
            skip_push=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.image_name = self.image.image_name
        # For a local build this is the image ID, which changes with every rebuild
        # that changes the image: containers that run it by this value get replaced.
        self.repo_digest = self.image.repo_digest
        self.register_outputs({"image_name": self.image_name, "repo_digest": self.repo_digest})
