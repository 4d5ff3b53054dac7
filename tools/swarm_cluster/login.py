"""The registry's login: a password made for one cluster's life, and the htpasswd line the registry checks it by.

The password is written to a 0600 file in the 0700 state directory and never printed: `up` prints
the file's path (IMAGE_REGISTRY_PASSWORD_FILE), from which a deploy sets the secret
`imageRegistryPassword`. The registry gets only the bcrypt hash.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess

from tools.swarm_cluster.spec import ClusterError

# apache2-utils' htpasswd makes the bcrypt line: the registry (docker-registry 2.8) accepts bcrypt only.
HTPASSWD = "htpasswd"
# bcrypt's cost slows guessing a weak password; this one is 256 random bits, which no cost adds
# to, while the registry checks the hash on every request of every pull (each layer, 3 nodes at once).
_BCRYPT_COST = 5


def new_password() -> str:
    """43 URL-safe characters (256 bits): nothing in it needs quoting in a shell, a config or an auth header."""
    return secrets.token_urlsafe(32)


def htpasswd_line(username: str, password: str) -> str:
    """`username:$2y$...`: the password goes to htpasswd on stdin, never in its arguments (the process list)."""
    program = shutil.which(HTPASSWD)
    if program is None:
        raise ClusterError(
            f"{HTPASSWD} is not installed: the registry's login is a bcrypt line it makes "
            "(Debian and Ubuntu: apt-get install apache2-utils)"
        )
    # -n: print, -i: the password from stdin, -B: bcrypt.
    done = subprocess.run(
        [program, "-niB", "-C", str(_BCRYPT_COST), username],
        input=password,
        capture_output=True,
        text=True,
        check=False,
    )
    line = done.stdout.strip()
    if done.returncode != 0 or not line.startswith(f"{username}:$2"):
        raise ClusterError(
            f"{HTPASSWD} made no bcrypt line for {username} (exit {done.returncode}): {done.stderr.strip()}"
        )
    return line
