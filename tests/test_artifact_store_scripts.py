"""The bucket from inside the image: prepare_db.py's start-up check and gc.py's deletions, against moto's S3.

The end-to-end test (tests/test_e2e_artifact_bucket.py) runs the same code against a real
S3 server (SeaweedFS); here each refusal is tried on its own, in milliseconds.
"""

from __future__ import annotations

import hashlib
import importlib.util
import socket
import sys
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from moto import mock_aws

from tools.stack_config import PROJECT_DIR

BUCKET = "ml-artifacts"


def _load(name: str, file: str, *, register: bool = False) -> ModuleType:
    """A script of the image as a module; `register` puts it in sys.modules under `name`, as the
    image's own `import <name>` (and a dataclass's annotations) find it."""
    spec = importlib.util.spec_from_file_location(name, PROJECT_DIR / "mlflow" / file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    if register:
        sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


prepare_db = _load("mlflow.prepare_db", "prepare_db.py")
gc = _load("mlflow_gc_script", "gc.py")


@pytest.fixture
def store(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 with one bucket; credentials only in this process's environment."""
    for variable in ("MLFLOW_S3_ENDPOINT_URL", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CA_BUNDLE", "AWS_PROFILE"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket=BUCKET)
        yield client


def test_a_reachable_bucket_passes_and_says_so(store: Any, capsys: pytest.CaptureFixture[str]) -> None:
    prepare_db._check_artifact_store(f"s3://{BUCKET}/teams/prod")
    assert capsys.readouterr().err == f"prepare_db: artifact store s3://{BUCKET}/teams/prod at AWS S3 is reachable\n"


def test_a_missing_bucket_names_artifact_bucket(store: Any) -> None:
    with pytest.raises(SystemExit) as stopped:
        prepare_db._check_artifact_store("s3://no-such-bucket/prefix")
    assert str(stopped.value) == (
        "prepare_db: config key 'artifactBucket' is 'no-such-bucket', which does not exist at AWS S3; "
        "create it first (the stack never creates or deletes buckets)"
    )


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_endpoint_that_does_not_answer_names_artifact_endpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with pytest.raises(SystemExit) as stopped:
        prepare_db._check_artifact_store(f"s3://{BUCKET}")
    assert str(stopped.value) == (
        f"prepare_db: config key 'artifactEndpoint' is '{endpoint}', which does not answer "
        "(EndpointConnectionError); check the URL and that this container has a route to it"
    )


@pytest.mark.parametrize(
    ("code", "status", "message"),
    [
        ("InvalidAccessKeyId", 403, "config key 'artifactAccessKeyId' is 'AKIAWRONG', which AWS S3 does not know"),
        (
            "SignatureDoesNotMatch",
            403,
            "config key 'artifactSecretAccessKey' is not the secret of artifactAccessKeyId 'AKIAWRONG' "
            "(AWS S3 refused the signature)",
        ),
        (
            "AccessDenied",
            403,
            f"config key 'artifactBucket' is '{BUCKET}', which AWS S3 does not let artifactAccessKeyId 'AKIAWRONG' "
            "list (the bucket is missing, or its policy does not grant ListBucket, GetObject, PutObject and "
            "DeleteObject on the prefix)",
        ),
        ("SlowDown", 503, f"config key 'artifactBucket' is '{BUCKET}': AWS S3 answered HTTP 503 SlowDown"),
    ],
)
def test_each_refusal_names_the_key_to_change(
    monkeypatch: pytest.MonkeyPatch, code: str, status: int, message: str
) -> None:
    # moto accepts any key; each answer of a real store (SeaweedFS's, checked) is stubbed.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONG")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    real_client = boto3.Session.client

    def refusing(self: Any, *args: Any, **kwargs: Any) -> Any:
        client = real_client(self, *args, **kwargs)
        stubber = Stubber(client)
        stubber.add_client_error("list_objects_v2", service_error_code=code, http_status_code=status)
        stubber.activate()
        return client

    monkeypatch.setattr(boto3.Session, "client", refusing)
    with pytest.raises(SystemExit) as stopped:
        prepare_db._check_artifact_store(f"s3://{BUCKET}/p")
    assert str(stopped.value) == f"prepare_db: {message}"


def test_the_check_runs_before_the_database_is_touched(store: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_ARTIFACTS_DESTINATION", "s3://no-such-bucket")
    # Unset: the first database step would raise KeyError, not the store's one line.
    monkeypatch.delenv("MLFLOW_BACKEND_STORE_URI", raising=False)
    with pytest.raises(SystemExit, match="config key 'artifactBucket' is 'no-such-bucket'"):
        prepare_db.main()


def _put(store: Any, key: str, body: bytes) -> str:
    store.put_object(Bucket=BUCKET, Key=key, Body=body)
    return hashlib.sha256(body).hexdigest()


def test_gc_deletes_a_purged_runs_objects_under_the_prefix_and_nothing_else(store: Any) -> None:
    _put(store, "teams/prod/1/deadrun/artifacts/model/weights.bin", b"w" * 1024)
    _put(store, "teams/prod/1/deadrun/artifacts/metrics.json", b"{}")
    kept = {
        "teams/prod/1/liverun/artifacts/model/weights.bin": _put(
            store, "teams/prod/1/liverun/artifacts/model/weights.bin", b"l" * 1024
        ),
        # Another stack's run of the same id, beside this stack's prefix.
        "teams/dev/1/deadrun/artifacts/x": _put(store, "teams/dev/1/deadrun/artifacts/x", b"x"),
    }
    resolve = gc.bucket_artifact_repository(f"s3://{BUCKET}/teams/prod")
    resolve("mlflow-artifacts:/1/deadrun/artifacts").delete_artifacts()
    left = store.list_objects_v2(Bucket=BUCKET)["Contents"]
    assert {
        item["Key"]: hashlib.sha256(store.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()).hexdigest()
        for item in left
    } == kept


@pytest.mark.parametrize("uri", ["mlflow-artifacts:/", "mlflow-artifacts:/1/../../teams", "mlflow-artifacts:/1//x"])
def test_gc_refuses_a_uri_that_leaves_the_runs_own_place(uri: str) -> None:
    with pytest.raises(ValueError, match="points outside the run's own directory"):
        gc.bucket_artifact_repository(f"s3://{BUCKET}/teams/prod")(uri)


def test_gc_leaves_other_schemes_to_mlflow(store: Any) -> None:
    repository = gc.bucket_artifact_repository(f"s3://{BUCKET}/teams/prod")(f"s3://{BUCKET}/elsewhere")
    assert repository.artifact_uri == f"s3://{BUCKET}/elsewhere"


def test_an_image_without_boto3_names_artifact_store_and_the_lock_to_regenerate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import mlflow

    # None in sys.modules makes the import fail, as in an image locked before boto3 was added.
    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(SystemExit) as stopped:
        prepare_db._check_artifact_store(f"s3://{BUCKET}")
    assert str(stopped.value) == (
        f"prepare_db: config key 'artifactStore' is 's3', but this image (MLflow {mlflow.__version__}) has no "
        f"boto3: its lock predates the S3 store; run 'make lock-image MLFLOW_VERSION={mlflow.__version__}' "
        "and deploy again"
    )
