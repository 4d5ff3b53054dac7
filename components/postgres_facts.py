"""Facts about the official Postgres image and the cluster this stack makes with it."""

from __future__ import annotations

from components.workload import SECRETS_DIR

# The cluster's superuser: the official image's default. It only bootstraps.
SUPERUSER = "postgres"
POSTGRES_PORT = 5432
# The official image's postgres user and group.
POSTGRES_UID = "999"
POSTGRES_USER = f"{POSTGRES_UID}:{POSTGRES_UID}"
DATA_MOUNT = "/var/lib/postgresql/data"
# A subdirectory: initdb refuses a mount point that holds anything (lost+found on
# some volume drivers), and the official image documents this layout.
PGDATA = f"{DATA_MOUNT}/pgdata"
# The official image's socket directory: local connections there are trusted, so
# whoever mounts the socket volume is the superuser (only the bootstrap does).
SOCKET_DIR = "/var/run/postgresql"
SUPERUSER_PASSWORD_FILE = f"{SECRETS_DIR}/postgres-superuser-password"
