#!/usr/bin/env bash
# `make move-artifacts STEP=copy|finish STACK=...`: moves a stack's artifacts from its volume to
# its bucket, then switches the stack to the bucket (README "Moving a stack's artifacts to a bucket").
#
#   copy STACK    one pass while the server keeps serving: every file of the artifacts volume is
#                 uploaded to the same relative key under artifactPrefix, then every object is read
#                 back and its sha256 compared with the file's. Repeat it as often as you like: a
#                 file already in the bucket with its sha256 is not uploaded again.
#   finish STACK  stops the server and gc (no write may land in the volume after the last pass),
#                 runs the final pass (what was written since the last copy, then every object
#                 verified), and only when it succeeds sets artifactStore s3 and runs
#                 `scripts/deploy.sh up`. A failed final pass restarts both containers on the volume.
#
# Two steps rather than one command: the copy of a large volume takes as long as it takes while
# clients keep working; the outage is only `finish` (the delta, the read-back, the redeploy).
#
# The bucket settings come from the stack's config (artifactBucket and the others, set beforehand
# with artifactStore still volume); the pass runs in a one-off container of the stack's own MLflow
# image (mlflow/move_artifacts.py), on the stack's front network, hardened like the stack's
# containers, with the volume read-only. The key pair reaches that container on its stdin, into a
# 0600 file on its tmpfs: never its environment, arguments, labels or a file on this host. The
# volume is left as it is (reclaiming it is a separate, deliberate step).
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: scripts/move-artifacts.sh copy|finish STACK"
step=${1:?$usage}
stack=${2:?$usage}
case "$step" in
  copy | finish) ;;
  *)
    echo "$usage" >&2
    exit 2
    ;;
esac

# The CLI `make deploy` uses: the one on PATH, or the one it installed into ./.pulumi-cli.
if ! pulumi=$(command -v pulumi); then
  pulumi=${PULUMI_CLI_ROOT:-$PWD/.pulumi-cli}/bin/pulumi
  if [ ! -x "$pulumi" ]; then
    echo "error: no Pulumi CLI on PATH or in ${PULUMI_CLI_ROOT:-.pulumi-cli}; run 'make deploy STACK=$stack' first" >&2
    exit 1
  fi
fi

output() {
  "$pulumi" stack output "$1" --stack "$stack"
}

# An unset key prints nothing: Pulumi.yaml's defaults for all of these are empty (or false).
setting() {
  "$pulumi" config get "$1" --stack "$stack" 2>/dev/null || true
}

# The script stops and runs containers by name on one host; a swarm stack's are services' tasks.
engine=$(setting engine)
if [ "${engine:-standalone}" != standalone ]; then
  echo "error: stack $stack has config key 'engine' '$engine': moving artifacts stops and runs containers" \
    "on one Docker host: accepted: standalone (on swarm, set artifactStore s3 before the first deploy)" >&2
  exit 1
fi
current=$(setting artifactStore)
if [ "${current:-volume}" != volume ]; then
  echo "error: stack $stack has config key 'artifactStore' '$current': its artifacts are not in its volume" >&2
  exit 1
fi
bucket=$(setting artifactBucket)
if [ -z "$bucket" ]; then
  echo "error: stack $stack has config key 'artifactBucket' empty: set the bucket's settings first" \
    "(README \"Moving a stack's artifacts to a bucket\")" >&2
  exit 1
fi
# The server's destination as the settings make it (components/settings): the prefix without its slashes.
prefix=$(setting artifactPrefix | sed 's#^/*##; s#/*$##')
destination="s3://$bucket${prefix:+/$prefix}"
endpoint=$(setting artifactEndpoint | sed 's#/*$##')
region=$(setting artifactRegion)
path_style=$(setting artifactPathStyle)
key_id=$(setting artifactAccessKeyId)
ca_certificate=$(setting artifactCaCertificate)

image=$(output mlflow_image_name)
volume=$(output artifacts_volume_name)
network=$(output network_name)
server=$(output mlflow_container_name)
gc=$(output gc_container_name)

# The same environment components/artifact_store.py gives the server, bar the key pair's file,
# which lives on this container's tmpfs.
credentials_file=/tmp/artifact-store-credentials
ca_file=/run/secrets/artifact-store-ca.pem
run=(run --rm -i --name "$server-move-artifacts" --network "$network"
  --user 10001:10001 --read-only --cap-drop ALL --security-opt no-new-privileges
  --memory 512m --memory-swap 512m --pids-limit 256
  --tmpfs "/tmp:rw,noexec,nosuid,nodev,size=16m"
  --volume "$volume:/mlflow/artifacts:ro"
  --env "MLFLOW_ARTIFACTS_DESTINATION=$destination" --env HOME=/tmp)
if [ -n "$endpoint" ]; then run+=(--env "MLFLOW_S3_ENDPOINT_URL=$endpoint"); fi
if [ -n "$region" ]; then run+=(--env "AWS_DEFAULT_REGION=$region"); fi
if [ "$path_style" = true ]; then run+=(--env MLFLOW_BOTO_CLIENT_ADDRESSING_STYLE=path); fi
if [ -n "$key_id" ]; then run+=(--env "AWS_SHARED_CREDENTIALS_FILE=$credentials_file"); fi
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
if [ -n "$ca_certificate" ]; then
  # Public, so a plain file: the container's user must be able to read it.
  printf '%s\n' "$ca_certificate" >"$workdir/ca.pem"
  chmod 0644 "$workdir/ca.pem"
  chmod 0755 "$workdir"
  run+=(--volume "$workdir/ca.pem:$ca_file:ro" --env "AWS_CA_BUNDLE=$ca_file")
fi
run+=(--entrypoint /bin/sh "$image" -c
  "umask 077 && cat >$credentials_file && exec python /opt/mlflow-entrypoint/move_artifacts.py")

one_pass() {
  # printf is a builtin: the secret is in no process's arguments, only in the pipe.
  if [ -n "$key_id" ]; then
    local secret
    secret=$(setting artifactSecretAccessKey)
    printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$key_id" "$secret" |
      docker "${run[@]}"
  else
    docker "${run[@]}" </dev/null
  fi
}

case "$step" in
  copy)
    echo "copying $volume to $destination while $server keeps serving" >&2
    one_pass
    ;;
  finish)
    started=$SECONDS
    echo "stopping $server and $gc: clients get 502 (or a refused connection without the proxy) until the switch" >&2
    # The server's own grace (STOP_TIMEOUT_SECONDS in components/mlflow_server.py) for uploads in flight.
    docker stop --time 60 "$server" "$gc" >/dev/null
    if ! one_pass; then
      echo "error: the final pass failed; $stack stays on its volume: restarting $server and $gc" >&2
      docker start "$server" "$gc" >/dev/null
      exit 1
    fi
    "$pulumi" config set artifactStore s3 --stack "$stack"
    if ! scripts/deploy.sh up "$stack"; then
      echo "error: every artifact is in $destination and verified, but the switch did not deploy; fix the" \
        "cause and run 'make deploy STACK=$stack' (or, to stay on the volume: pulumi config set" \
        "artifactStore volume --stack $stack && make deploy STACK=$stack)" >&2
      exit 1
    fi
    echo "moved: $stack serves its artifacts from $destination ($((SECONDS - started))s without a server);" \
      "volume $volume is kept as it was" >&2
    ;;
esac
