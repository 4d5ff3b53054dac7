"""How the server and gc reach an S3 artifact store: plain settings in the environment, the key pair as a file.

The environment is readable by anyone who can `docker inspect` the container and by every
process of it (/proc/<pid>/environ), so it carries only where the store is. The key pair
goes into an AWS shared-credentials file, uploaded 0400 under /run/secrets, which boto3
reads through AWS_SHARED_CREDENTIALS_FILE: no process has it in its environment.
"""

from __future__ import annotations

import pulumi

from components.settings import ArtifactSettings, BucketLocation
from components.workload import SECRETS_DIR, File, config_file, secret_file

CREDENTIALS_FILE = f"{SECRETS_DIR}/artifact-store-credentials"
CA_FILE = f"{SECRETS_DIR}/artifact-store-ca.pem"


def environment(artifacts: ArtifactSettings) -> list[str]:
    """Where the bucket is, for `mlflow server`, prepare_db.py's start-up check and gc.py; never a key."""
    envs = [f"MLFLOW_ARTIFACTS_DESTINATION={artifacts.destination}"]
    if artifacts.endpoint:
        envs.append(f"MLFLOW_S3_ENDPOINT_URL={artifacts.endpoint}")
    if artifacts.region:
        envs.append(f"AWS_DEFAULT_REGION={artifacts.region}")
    if artifacts.path_style:
        # Not an AWS config file's `s3 = addressing_style = path`: MLflow builds its boto3
        # client with its own Config(s3={"addressing_style": ...}), which overrides the
        # file, from this variable (mlflow/store/artifact/s3_artifact_repo.py, _get_s3_client).
        envs.append("MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE=path")
    if artifacts.access_key_id:
        envs.append(f"AWS_SHARED_CREDENTIALS_FILE={CREDENTIALS_FILE}")
    if artifacts.ca_certificate:
        # boto3 verifies against this bundle when MLflow passes verify=None (its default).
        envs.append(f"AWS_CA_BUNDLE={CA_FILE}")
    return envs


def files(artifacts: ArtifactSettings) -> list[File]:
    """The key pair as a secret file (none with an instance role), the store's CA as a public one."""
    return bucket_files(artifacts, CREDENTIALS_FILE, CA_FILE)


def bucket_files(location: BucketLocation, credentials_path: str, ca_path: str) -> list[File]:
    """A bucket's key pair as an AWS shared-credentials file (0400, secret) and its store's CA (public)."""
    uploaded: list[File] = []
    if location.access_key_id:
        credentials = pulumi.Output.secret(location.secret_access_key).apply(
            lambda secret: (
                f"[default]\naws_access_key_id = {location.access_key_id}\naws_secret_access_key = {secret}\n"
            )
        )
        uploaded.append(secret_file(credentials_path, credentials))
    if location.ca_certificate:
        uploaded.append(config_file(ca_path, location.ca_certificate))
    return uploaded
