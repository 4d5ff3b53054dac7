"""`python -m tools.local_deploy prepare | up | down | swarm-init | swarm-leave`: the program on the local engine.

Other tooling calls these commands by name; `up` prints the stack outputs as one
JSON object on the last line of stdout (secrets revealed: local tests only).
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence

from tools.stack_config import stack_config

# An older release for the upgrade test: the image is rebuilt with the default
# version over a database this one created.
UPGRADE_FROM_VERSION = "3.12.0"


def mlflow_versions() -> list[str]:
    """Pulumi.yaml's default `mlflowVersion`, then the upgrade test's starting version."""
    return [str(stack_config("dev")["mlflowVersion"]), UPGRADE_FROM_VERSION]


def parse_set(pairs: Sequence[str]) -> dict[str, object]:
    """`key=value` pairs; a value that parses as JSON is typed (ports, booleans, lists)."""
    overrides: dict[str, object] = {}
    for pair in pairs:
        key, separator, raw = pair.partition("=")
        if not separator or not key:
            raise SystemExit(f"--set takes key=value, got {pair!r}")
        try:
            overrides[key] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key] = raw
    return overrides


def default_node_label() -> str:
    """Pulumi.yaml's default `postgresNodeLabel`: the node the swarm stacks pin Postgres to."""
    return str(stack_config("dev")["postgresNodeLabel"])


def parse_node_labels(pairs: Sequence[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise SystemExit(f"--node-label takes key=value, got {pair!r}")
        labels[key] = value
    return labels


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.local_deploy", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("prepare", help="build the stand-in images and fill mlflow/wheelhouse")
    up_parser = commands.add_parser("up", help="deploy the stack on the local Docker engine")
    up_parser.add_argument("--stack", default="dev")
    up_parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                           help="config override, short key of Pulumi.yaml (repeatable)")  # fmt: skip
    up_parser.add_argument("--no-standins", action="store_true", help="use the configured images, not the stand-ins")
    down_parser = commands.add_parser("down", help="remove what `up` made for the stack")
    down_parser.add_argument("--stack", default="dev")
    keep = down_parser.add_mutually_exclusive_group()
    keep.add_argument(
        "--keep-volumes",
        action="store_true",
        help="keep the data volumes; forget the passwords, as pulumi destroy does",
    )
    keep.add_argument("--purge", action="store_true", help="also remove retainOnDelete volumes and the state file")
    swarm_init_parser = commands.add_parser(
        "swarm-init", help="put the engine in swarm mode (single node, idempotent) and label the node for Postgres"
    )
    swarm_init_parser.add_argument(
        "--node-label", dest="node_labels", action="append", default=[], metavar="KEY=VALUE",
        help="node label (repeatable; default: Pulumi.yaml's postgresNodeLabel)",
    )  # fmt: skip
    commands.add_parser("swarm-leave", help="leave swarm mode (every service on the engine goes)")
    args = parser.parse_args(argv)

    # Imported here: `--help` should not wait for the Pulumi SDK to load.
    from tools.local_deploy import deployer

    try:
        if args.command == "prepare":
            from tools.local_deploy.prepare import prepare

            prepare(mlflow_versions(), standins=deployer.standins_enabled())
        elif args.command == "swarm-init":
            from tools.local_deploy.swarm import swarm_init

            swarm_init(parse_node_labels(args.node_labels or [default_node_label()]))
        elif args.command == "swarm-leave":
            from tools.local_deploy.swarm import swarm_leave

            swarm_leave()
        elif args.command == "up":
            outputs = deployer.up(args.stack, parse_set(args.sets), standins=False if args.no_standins else None)
            print(json.dumps(outputs, sort_keys=True, default=str), flush=True)
        else:
            deployer.down(args.stack, keep_volumes=args.keep_volumes, purge=args.purge)
    except KeyboardInterrupt:
        print(f"local-deploy: {args.command} interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # every failure becomes one clear message and exit 1
        if not isinstance(error, deployer.DeployError) and type(error).__name__ not in _EXPECTED_ERRORS:
            traceback.print_exc()
        print(f"local-deploy: {args.command} failed: {error}", file=sys.stderr)
        return 1
    return 0


# Errors whose message says everything: no traceback for them.
_EXPECTED_ERRORS = frozenset({"SettingsError", "PrepareError"})

if __name__ == "__main__":
    sys.exit(main())
