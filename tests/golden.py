"""Golden files of every stack's declared resources: what an upgrade must not replace.

A resource's URN is made of its type, its name and its parents' types; change one and
`pulumi up` deletes the old resource and creates a new one: for a container of Postgres,
a restart at best; for a volume without `retainOnDelete`, the data. The files under
tests/golden/ record, for each stack and TLS mode, every resource the program declares
under mocks: type, name, URN, parent, resource options and full inputs (secrets
unwrapped, since the mocks' values are derived from resource names, not real secrets).

`python -m tests.golden` rewrites them: do it only for a change meant to alter what is
deployed, and read the diff (tests/test_upgrade_keeps_resources.py compares against them).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pulumi

from tests.certs import KeyPair, self_signed
from tools.mocks import EngineMocks, Registration, resolved, run_program
from tools.stack_config import PROJECT_DIR

GOLDEN_DIR = PROJECT_DIR / "tests" / "golden"

# Certificates are made fresh per run; the files hold a placeholder in their place.
_PROVIDED: KeyPair = self_signed(["mlflow.example.internal"])
_ACME_ROOT: KeyPair = self_signed(["acme-ca.example.internal"], ca=True)
PLACEHOLDERS = {
    _PROVIDED.certificate: "<tlsCertificate>",
    _PROVIDED.key: "<tlsPrivateKey>",
    _ACME_ROOT.certificate: "<acmeCaCertificate>",
}

# Name -> (stack, config overrides): every stack, and prod in each TLS mode.
CASES: dict[str, tuple[str, dict[str, object]]] = {
    "dev": ("dev", {}),
    "staging": ("staging", {}),
    "prod": ("prod", {}),
    "prod-acme": (
        "prod",
        {
            "tlsMode": "acme",
            "acmeEmail": "ops@example.com",
            "acmeDirectoryUrl": "https://acme.example.internal/acme/directory",
            "acmeCaCertificate": _ACME_ROOT.certificate,
        },
    ),
    "prod-provided": (
        "prod",
        {"tlsMode": "provided", "tlsCertificate": _PROVIDED.certificate, "tlsPrivateKey": _PROVIDED.key},
    ),
}


def _placeheld(value: Any) -> Any:
    if isinstance(value, str):
        for text, placeholder in PLACEHOLDERS.items():
            # Settings strip the PEM's trailing newline: the stripped text first.
            value = value.replace(text.strip(), placeholder)
        return value
    if isinstance(value, dict):
        return {key: _placeheld(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_placeheld(item) for item in value]
    return value


def record(registration: Registration) -> dict[str, Any]:
    """What decides whether an upgrade keeps, updates or replaces the resource."""
    placeheld: dict[str, Any] = _placeheld(
        {
            "type": registration.type,
            "name": registration.name,
            "parent": registration.parent,
            "protect": registration.protect,
            "retain_on_delete": registration.retain_on_delete,
            "delete_before_replace": registration.delete_before_replace,
            "dependencies": sorted(registration.dependencies),
            "secret_inputs": sorted(registration.secret_inputs()),
            "inputs": registration.inputs,
        }
    )
    return placeheld


def declared(case: str) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """URN -> record of every resource the case declares, and URN -> the URNs it aliases."""
    stack, overrides = CASES[case]
    found: list[EngineMocks] = []

    @pulumi.runtime.test
    def run() -> pulumi.Output[None]:
        mocks, outputs = run_program(stack, overrides)
        return resolved(outputs, lambda _values, _secrets: found.append(mocks))

    run()
    [mocks] = found
    records = {urn: record(registration) for urn, registration in sorted(mocks.registrations.items())}
    aliases = {urn: list(registration.aliases) for urn, registration in mocks.registrations.items()}
    return records, aliases


def golden_path(case: str) -> Path:
    return GOLDEN_DIR / f"{case}.json"


def load(case: str) -> dict[str, dict[str, Any]]:
    loaded: dict[str, dict[str, Any]] = json.loads(golden_path(case).read_text(encoding="utf-8"))
    return loaded


def write(case: str, records: Mapping[str, Any]) -> None:
    GOLDEN_DIR.mkdir(exist_ok=True)
    golden_path(case).write_text(json.dumps(records, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.golden", description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", default=sorted(CASES), help="cases to rewrite (default: all)")
    for case in parser.parse_args().cases:
        records, _aliases = declared(case)
        write(case, records)
        print(f"{golden_path(case).relative_to(PROJECT_DIR)}: {len(records)} resources")


if __name__ == "__main__":
    main()
