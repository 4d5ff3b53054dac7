"""MlflowImage: mlflow/Dockerfile built on the engine that runs it, alone and in every stack."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from components.mlflow_image import MlflowImage
from tests.conftest import IMAGE
from tests.expected import (
    BASE_REFERENCE,
    MLFLOW_IMAGE,
    STACKS,
    UNIT_SERVER,
    built,
    children,
    registered_outputs,
    resolve,
    unit_context,
)
from tests.harness import declaration


def _image(image_name: str, base_image: str, mlflow_version: str, wheelhouse: str) -> dict[str, Any]:
    return {
        "imageName": image_name,
        "build": {
            # Relative to the project: an absolute path would differ per machine.
            "context": "./mlflow",
            "dockerfile": "./mlflow/Dockerfile",
            "args": {"BASE_IMAGE": base_image, "MLFLOW_VERSION": mlflow_version, "USE_WHEELHOUSE": wheelhouse},
        },
        # Built where it runs; no registry is involved.
        "skipPush": True,
        "buildOnPreview": False,
    }


@pytest.mark.parametrize(("use_wheelhouse", "flag"), [(True, "true"), (False, "")])
def test_the_image_alone(use_wheelhouse: bool, flag: str) -> None:
    mocks, _ = built(
        lambda: MlflowImage(
            "mlflow-image",
            {
                "stack": unit_context(),
                "server": dataclasses.replace(UNIT_SERVER, use_wheelhouse=use_wheelhouse),
            },
        )
    )
    assert children(mocks, "mlflow-image") == {"mlflow-image-image": IMAGE}
    assert mocks.one(IMAGE).inputs == _image("mlflow-platform/mlflow:3.18.1-unit", "py:1", "3.18.1", flag)
    # The repo digest (a local build's image ID) is what containers run: a rebuild replaces them.
    assert registered_outputs(mocks, "mlflow-image") == {
        "image_name": "mlflow-platform/mlflow:3.18.1-unit",
        "repo_digest": resolve(MLFLOW_IMAGE, mocks),
    }


@pytest.mark.parametrize("stack", STACKS)
def test_the_image_of_every_stack(stack: str) -> None:
    image = _image(f"mlflow-platform/mlflow:3.17.2-{stack}", BASE_REFERENCE[stack], "3.17.2", "")
    assert declaration(stack).mocks.one(IMAGE, "image-image").inputs == image
