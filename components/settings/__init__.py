"""The stack's settings: read from Pulumi config once, validated, typed.

Every key is declared in Pulumi.yaml with its type, default and description; the
CLI merges those defaults with the stack file. `load_settings` turns the raw
values into a frozen `StackSettings` or raises `SettingsError` naming the key, the
value and what is accepted, before the program declares any resource.

- reader.py: reading one raw key, and `SettingsError`;
- grammar.py: what each value may look like, and how hosts and the public URL are written;
- model.py: `StackSettings` and its groups (database, server, artifacts, tls, backups, gc);
- rules.py: rules that span keys;
- load.py: `load_settings`, group by group.
"""

from __future__ import annotations

from components.settings.grammar import OLDEST_MLFLOW, host_header, is_ip_address, public_url
from components.settings.load import load_settings
from components.settings.model import (
    ArtifactSettings,
    BackupSettings,
    BucketLocation,
    DatabaseSettings,
    GcSettings,
    ServerSettings,
    StackSettings,
    TlsSettings,
)
from components.settings.reader import SettingsError

__all__ = [
    "OLDEST_MLFLOW",
    "ArtifactSettings",
    "BackupSettings",
    "BucketLocation",
    "DatabaseSettings",
    "GcSettings",
    "ServerSettings",
    "SettingsError",
    "StackSettings",
    "TlsSettings",
    "host_header",
    "is_ip_address",
    "load_settings",
    "public_url",
]
