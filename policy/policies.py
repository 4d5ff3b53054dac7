"""The mlflow-platform policy pack's rules, assembled; importable without starting a policy server.

`__main__.py` hands `POLICIES` to a `PolicyPack`, which starts a gRPC server as soon
as it is constructed; the tests import this module instead and call each policy's
`validate` directly.

The pack is split by concern, and this module only assembles it:

- readers.py: reading what the engine hands a policy (inputs, unknown values, URNs, the pack config);
- identify.py: which resource is which (Postgres, the tracking server, secret generators);
- the rules by subject: rules_containers.py, rules_secrets.py, rules_volumes.py, rules_networks.py, rules_server.py,
  rules_swarm.py (services, engine: swarm).
"""

from __future__ import annotations

from typing import Final

from pulumi_policy import Policy

from .rules_containers import (
    container_healthcheck,
    container_restart_policy,
    container_task_limit,
    image_pinned,
    postgres_not_published,
    shared_stack_image_digests,
)
from .rules_networks import postgres_internal_networks
from .rules_secrets import container_env_no_secret_values, container_env_secret_names
from .rules_server import mlflow_behind_proxy, mlflow_public_needs_auth, protected_stack_mlflow_auth, shared_stack_tls
from .rules_swarm import postgres_service_not_published, service_hardening
from .rules_volumes import protected_stack_volumes

# Typed as the PolicyPack takes it (a list of Policy; a list is invariant in its item type).
POLICIES: Final[list[Policy]] = [
    postgres_not_published,
    postgres_internal_networks,
    container_healthcheck,
    container_restart_policy,
    container_task_limit,
    image_pinned,
    shared_stack_image_digests,
    container_env_secret_names,
    container_env_no_secret_values,
    protected_stack_volumes,
    protected_stack_mlflow_auth,
    mlflow_public_needs_auth,
    mlflow_behind_proxy,
    shared_stack_tls,
    service_hardening,
    postgres_service_not_published,
]
