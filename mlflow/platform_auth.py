"""MLflow's basic-auth app, with its Flask secret key read from a file by each worker.

Installed in the image's virtualenv as the `mlflow.app` entry point `platform-basic-auth`
(mlflow/Dockerfile), which the server runs as `mlflow server --app-name platform-basic-auth`.

Why not `--app-name basic-auth`: under that name `mlflow server` requires the key in its
own environment (MLFLOW_FLASK_SERVER_SECRET_KEY) and copies it into the environment of
uvicorn and of every worker, where `/proc/<pid>/environ` shows it for the process's
lifetime. Under this name `mlflow server` neither reads nor forwards it: uvicorn calls
`create_app` in each worker, which reads the key from the file the Pulumi program
uploaded, sets it in the worker's own memory (a later `os.environ` change is not in
`/proc/<pid>/environ`, which shows the environment the process started with), and hands
over to MLflow's own basic-auth factory. Each worker creates the admin user if it is
missing (MLflow skips that only when `mlflow server` bootstrapped it); prepare_db.py has
already created it, with the declared password, before the server starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

KEY_VARIABLE = "MLFLOW_FLASK_SERVER_SECRET_KEY"
KEY_FILE_VARIABLE = "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE"


def create_app() -> Any:
    """The basic-auth ASGI app (uvicorn) of MLflow, keyed from the secret file."""
    key = Path(os.environ[KEY_FILE_VARIABLE]).read_text(encoding="utf-8").rstrip("\n")
    if not key:
        raise RuntimeError(f"{KEY_FILE_VARIABLE} ({os.environ[KEY_FILE_VARIABLE]}) is empty")
    os.environ[KEY_VARIABLE] = key
    from mlflow.server.auth import create_app as create_basic_auth_app

    return create_basic_auth_app()
