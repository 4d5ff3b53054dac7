#!/opt/mlflow/bin/python
"""`mlflow gc` for the stack: purges runs and experiments deleted more than GC_OLDER_THAN ago.

    mlflow-gc loop   the gc container's main process: a gc 10 minutes after start, then every
                     GC_INTERVAL_SECONDS
    mlflow-gc now    one gc, for operators (`docker exec <gc container> mlflow-gc now`)
    mlflow-gc health the health check: a gc succeeded (or the loop started) within twice the interval

The database password comes from POSTGRES_PASSWORD_FILE and stays in this process:
the URI reaches `mlflow gc` through `main(args=...)`, not a child's command line.

The server proxies artifacts (`mlflow-artifacts:/` URIs), which `mlflow gc` would
delete through the server's HTTP API, with credentials. This container reaches the
artifacts where the server keeps them instead: the artifacts volume, mounted here, or
the bucket (MLFLOW_ARTIFACTS_DESTINATION, with the server's key pair as a file), so
those URIs are resolved to the same files or objects.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

_STATE_DIR = Path(os.environ.get("TMPDIR", "/tmp"))  # noqa: S108 - the container's private tmpfs
_HEARTBEAT = _STATE_DIR / "mlflow-gc.last-success"
_STARTED = _STATE_DIR / "mlflow-gc.loop-started"
_RETRY_SECONDS = 300
# Not at start: a deployment starts this container together with the server, and a gc
# then (a whole MLflow import and a scan of the database, a core for seconds) took its
# CPU from the server's first requests. Nothing deleted is urgent to purge; a container
# that restarts in a loop must not run a gc on every start either.
_FIRST_DELAY_SECONDS = 600


def _log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"{stamp} mlflow-gc: {message}", file=sys.stderr, flush=True)


def backend_store_uri() -> str:
    password = Path(os.environ["POSTGRES_PASSWORD_FILE"]).read_text(encoding="utf-8").rstrip("\n")
    user = quote(os.environ["POSTGRES_USER"], safe="")
    host, port, database = os.environ["POSTGRES_HOST"], os.environ["POSTGRES_PORT"], os.environ["POSTGRES_DB"]
    return f"postgresql+psycopg://{user}:{quote(password, safe='')}@{host}:{port}/{database}"


def _run_relative(uri: str) -> str:
    """The path of a `mlflow-artifacts:/<path>` URI, refused when it could leave the run's own place."""
    path = urlsplit(uri).path.strip("/")
    if not path or any(part in ("", ".", "..") for part in path.split("/")):
        raise ValueError(f"artifact URI {uri!r} points outside the run's own directory")
    return path


def bucket_artifact_repository(destination: str) -> Any:
    """`get_artifact_repository`, with `mlflow-artifacts:/<path>` read as `<destination>/<path>` (s3://bucket/prefix).

    The repository reaches the bucket as the server does: the endpoint, region and addressing
    style from the environment, the key pair from AWS_SHARED_CREDENTIALS_FILE.
    """
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    def resolve(uri: str, *args: Any, **kwargs: Any) -> Any:
        if not uri.startswith("mlflow-artifacts:"):
            return get_artifact_repository(uri, *args, **kwargs)
        return get_artifact_repository(f"{destination.rstrip('/')}/{_run_relative(uri)}", *args, **kwargs)

    return resolve


def local_artifact_repository(artifacts_dir: str) -> Any:
    """`get_artifact_repository`, with `mlflow-artifacts:/<path>` read as `<artifacts_dir>/<path>`."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

    root = Path(artifacts_dir).resolve()

    def resolve(uri: str, *args: Any, **kwargs: Any) -> Any:
        if not uri.startswith("mlflow-artifacts:"):
            return get_artifact_repository(uri, *args, **kwargs)
        path = (root / urlsplit(uri).path.lstrip("/")).resolve()
        if not path.is_relative_to(root) or path == root:
            raise ValueError(f"artifact URI {uri!r} points outside the run's own directory")
        return LocalArtifactRepository(str(path))

    return resolve


def gc_once() -> None:
    import mlflow.cli

    uri = backend_store_uri()
    older_than = os.environ["GC_OLDER_THAN"]
    # The gc command looks the function up in its own module when it runs.
    destination = os.environ.get("MLFLOW_ARTIFACTS_DESTINATION")
    resolve = (
        bucket_artifact_repository(destination)
        if destination
        else local_artifact_repository(os.environ["ARTIFACTS_DIR"])
    )
    mlflow.cli.get_artifact_repository = resolve  # type: ignore[attr-defined]
    _log(f"purging runs and experiments deleted more than {older_than} ago")
    mlflow.cli.cli.main(
        args=["gc", "--backend-store-uri", uri, "--tracking-uri", uri, "--older-than", older_than],
        prog_name="mlflow",
        standalone_mode=False,
    )
    _HEARTBEAT.write_text(str(int(time.time())), encoding="utf-8")
    _log("done")


def _stop(signum: int, _frame: object) -> None:
    _log(f"stopping on {signal.Signals(signum).name}")
    sys.exit(0)


def loop() -> None:
    # The loop is the container's PID 1, which the kernel spares from any signal it has
    # no handler for: without this, `docker stop` waits out its whole timeout, then kills.
    signal.signal(signal.SIGTERM, _stop)
    interval = int(os.environ["GC_INTERVAL_SECONDS"])
    _STARTED.write_text(str(int(time.time())), encoding="utf-8")
    first = min(interval, _FIRST_DELAY_SECONDS)
    _log(f"first gc in {first}s, then every {interval}s")
    time.sleep(first)
    while True:
        try:
            gc_once()
            pause = interval
        except Exception as error:  # logged and retried: a failed gc is never silently skipped
            pause = min(interval, _RETRY_SECONDS)
            _log(f"gc FAILED ({type(error).__name__}: {error}); retrying in {pause}s")
        time.sleep(pause)


def health() -> int:
    interval = int(os.environ["GC_INTERVAL_SECONDS"])
    try:
        age = time.time() - int(_HEARTBEAT.read_text(encoding="utf-8"))
        print(f"last successful gc {age:.0f}s ago")
    except (OSError, ValueError):
        try:
            age = time.time() - int(_STARTED.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            print("the gc loop has not started")
            return 1
        print(f"no successful gc yet; the loop started {age:.0f}s ago")
    return 0 if age <= 2 * interval else 1


def main(argv: list[str]) -> int:
    command = argv[0] if argv else ""
    if command == "loop":
        loop()
    elif command == "now":
        gc_once()
    elif command == "health":
        return health()
    else:
        print("usage: mlflow-gc loop|now|health", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
