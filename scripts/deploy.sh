#!/usr/bin/env bash
# `make deploy` and `make destroy`: one stack on this machine's Docker engine, from a fresh
# clone. The Makefile has built both virtualenvs (hash-locked) before this runs; this script
# finds or installs the Pulumi CLI, then runs it with the policy pack.
#
# The CLI: one already on PATH is used as it is (with a warning when its version differs
# from the SDK pin in requirements.in). Without one, the release matching the pin is
# installed with Pulumi's official install script into a project-local, gitignored folder
# (PULUMI_CLI_ROOT, default ./.pulumi-cli), checked to run and report that version, and used.
# Kept out of the Makefile so tests/test_deploy_script.py can run it against stubs, and so
# `make lint` runs shellcheck on it.
set -euo pipefail
cd "$(dirname "$0")/.."

usage="usage: scripts/deploy.sh up|destroy STACK"
action=${1:?$usage}
stack=${2:?$usage}
case "$action" in
  up | destroy) ;;
  *)
    echo "$usage" >&2
    exit 2
    ;;
esac

cli_root=${PULUMI_CLI_ROOT:-$PWD/.pulumi-cli}
install_script_url=${PULUMI_INSTALL_SCRIPT_URL:-https://get.pulumi.com}

pinned=$(sed -n 's/^pulumi==\([0-9][0-9.]*\)[[:space:]]*$/\1/p' requirements.in)
if [ -z "$pinned" ]; then
  echo "error: requirements.in pins no pulumi release (a line 'pulumi==X.Y.Z')" >&2
  exit 1
fi

# `pulumi version` prints v3.272.0.
cli_version() {
  "$1" version 2>/dev/null | sed -n '1s/^v//p' || true
}

if ! docker info >/dev/null 2>&1; then
  echo "error: no Docker engine answers; start Docker first" >&2
  exit 1
fi

if pulumi=$(command -v pulumi); then
  found=$(cli_version "$pulumi")
  if [ "$found" != "$pinned" ]; then
    echo "warning: using the Pulumi CLI on PATH ($pulumi, version ${found:-unknown});" \
      "the SDK pin in requirements.in is $pinned" >&2
  fi
else
  pulumi=$cli_root/bin/pulumi
  if [ ! -x "$pulumi" ] || [ "$(cli_version "$pulumi")" != "$pinned" ]; then
    echo "No Pulumi CLI on PATH: installing Pulumi $pinned into $cli_root" >&2
    if ! command -v curl >/dev/null; then
      echo "error: curl is needed to download Pulumi's install script; install curl or the Pulumi CLI" >&2
      exit 1
    fi
    # --no-edit-path: leave the user's shell profile alone; this script puts it on PATH itself.
    curl -fsSL "$install_script_url" | sh -s -- --version "$pinned" --install-root "$cli_root" --no-edit-path
    found=$(cli_version "$pulumi")
    if [ "$found" != "$pinned" ]; then
      echo "error: the Pulumi CLI installed in $cli_root reports version '${found:-none}', not $pinned" >&2
      exit 1
    fi
  fi
  # The language and policy plugins ship beside the CLI.
  PATH=$cli_root/bin:$PATH
  export PATH
fi

"$pulumi" whoami >/dev/null 2>&1 || "$pulumi" login --local
"$pulumi" stack select --create "$stack"

# What the program cannot know from its settings (so cannot refuse before any resource): whether
# the engine it talks to is a swarm manager, and whether the swarm's other nodes could pull an
# image built on the manager alone.
check_swarm() {
  local engine swarm control nodes registry
  engine=$("$pulumi" config get engine --stack "$stack" 2>/dev/null || true)
  [ "$engine" = swarm ] || return 0
  swarm=$(docker info --format '{{.Swarm.ControlAvailable}} {{.Swarm.Nodes}}' 2>/dev/null || true)
  control=${swarm%% *}
  nodes=${swarm##* }
  if [ "$control" != true ]; then
    echo "error: config key 'engine' is 'swarm', but the Docker engine at ${DOCKER_HOST:-unix:///var/run/docker.sock}" \
      "is not a swarm manager: accepted: 'standalone', or DOCKER_HOST naming a manager (docker swarm init)" >&2
    exit 1
  fi
  registry=$("$pulumi" config get imageRegistry --stack "$stack" 2>/dev/null || true)
  case $nodes in '' | *[!0-9]*) nodes=1 ;; esac
  if [ -z "$registry" ] && [ "$nodes" -gt 1 ]; then
    echo "error: config key 'imageRegistry' is empty, but the swarm has $nodes nodes, which cannot pull an image" \
      "built on the manager: accepted: a registry every node pulls from, as host[:port][/path]" >&2
    exit 1
  fi
}

case "$action" in
  up)
    check_swarm
    # Every stack is judged as shared unless its pack config marks it a personal dev stack.
    policy=(--policy-pack policy)
    if [ -f "policy/config/$stack.json" ]; then
      policy+=(--policy-pack-config "policy/config/$stack.json")
    fi
    # --refresh: read what really runs first, so a container removed by hand is recreated.
    "$pulumi" up --stack "$stack" --refresh "${policy[@]}"
    echo "tracking URI: $("$pulumi" stack output tracking_uri --stack "$stack")"
    ;;
  destroy)
    "$pulumi" destroy --stack "$stack"
    ;;
esac
