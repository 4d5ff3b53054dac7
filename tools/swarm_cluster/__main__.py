"""`python -m tools.swarm_cluster prepare | up | down | check | stack-check`: a 3-node swarm on this machine.

`up` prints `DOCKER_HOST=...`, `IMAGE_REGISTRY=...`, `IMAGE_REGISTRY_CA_FILE=...`,
`IMAGE_REGISTRY_USERNAME=...` and `IMAGE_REGISTRY_PASSWORD_FILE=...` lines (shell syntax, for
`eval`; the password itself is never printed, only the 0600 file that holds it), then the whole
cluster description as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path


def main(argv: Sequence[str] | None = None) -> int:
    from tools.swarm_cluster import cluster, spec

    parser = argparse.ArgumentParser(prog="python -m tools.swarm_cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=cluster.DEFAULT_STATE_DIR,
                        help="sockets, the registry's TLS and cluster.json (default: %(default)s)")  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="build the node and registry stand-in images")
    up_parser = commands.add_parser("up", help="start the nodes and the registry, form the swarm, push the stand-ins")
    up_parser.add_argument("--subnet", default=spec.DEFAULT_SUBNET, help="the cluster bridge (default: %(default)s)")
    up_parser.add_argument("--postgres-node-label", default=None, metavar="KEY=VALUE",
                           help="label put on one worker (default: Pulumi.yaml's postgresNodeLabel)")  # fmt: skip
    up_parser.add_argument("--push", action="append", default=None, metavar="IMAGE",
                           help="local image to push (repeatable; default: the stacks' stand-ins)")  # fmt: skip
    commands.add_parser("down", help="remove the nodes, their volumes, the network, the registry and its trust")
    commands.add_parser("check", help="up, spread/placement/failover checks with timings, down (make cluster-check)")
    commands.add_parser(
        "stack-check",
        help="up, the program's swarm stack, a node stopped under load, all down (make cluster-stack-check)",
    )
    args = parser.parse_args(argv)

    try:
        if args.command == "prepare":
            from tools.local_deploy.prepare import ensure_cluster_images

            ensure_cluster_images()
        elif args.command == "up":
            # stdout is for the lines a shell evaluates: prepare's progress goes to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                made = cluster.up(
                    state_dir=args.state_dir,
                    subnet=args.subnet,
                    postgres_node_label=args.postgres_node_label,
                    push=cluster.DEFAULT_PUSH if args.push is None else args.push,
                    log=lambda line: print(line, file=sys.stderr, flush=True),
                )
            print(f"DOCKER_HOST={shlex.quote(made.docker_host)}")
            print(f"IMAGE_REGISTRY={shlex.quote(made.registry)}")
            print(f"IMAGE_REGISTRY_CA_FILE={shlex.quote(made.ca_certificate_file)}")
            print(f"IMAGE_REGISTRY_USERNAME={shlex.quote(made.registry_username)}")
            print(f"IMAGE_REGISTRY_PASSWORD_FILE={shlex.quote(made.registry_password_file)}")
            print(json.dumps(asdict(made), sort_keys=True), flush=True)
        elif args.command == "down":
            cluster.down(state_dir=args.state_dir, log=lambda line: print(line, file=sys.stderr, flush=True))
        elif args.command == "check":
            from tools.swarm_cluster.check import check

            print(json.dumps(check(state_dir=args.state_dir), indent=2, sort_keys=True), flush=True)
        else:
            from tools.swarm_cluster.stack_check import stack_check

            results: dict[str, object] = {}
            try:
                stack_check(results, state_dir=args.state_dir)
            finally:
                # What was measured, also when a step failed (the error follows on stderr).
                print(json.dumps(results, indent=2, sort_keys=True), flush=True)
    except KeyboardInterrupt:
        print(f"swarm-cluster: {args.command} interrupted", file=sys.stderr)
        return 130
    except spec.ClusterError as error:
        print(f"swarm-cluster: {args.command} failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
