"""How many tasks (processes and threads) each workload's user may run at once.

A fork bomb, a thread leak or a runaway worker pool inside one container stops at its limit
instead of taking every PID of the Docker host (issue 19, finding 12a).

Why `ulimit nproc` and not Docker's pids limit (`--pids-limit`, a pids cgroup per container):
pulumi-docker's Container has no such input (its provider schema has `ulimits` only, checked up
to 5.2.0 and the schema at the repository's HEAD), so RLIMIT_NPROC is the limit the provider can
set. It is not a per-container limit: the kernel counts every task of the container's *real uid*
in its user namespace (Docker does not remap uids here, so the host's), checks that count at each
fork and clone, and never limits root. Hence:

- every workload runs as a non-root uid of its own kind (the policy rule container-task-limit
  refuses a container as root, where the limit would bind nothing);
- a limit belongs to a uid, not to a container: every container running as the MLflow user
  (server, gc, backups, database bootstrap) draws on one count, as do other stacks on the same
  host and any host process with that uid. So each uid has one value here, whichever container
  sets it, sized for two stacks at their largest settings on one host (staging beside prod).
"""

from __future__ import annotations

from typing import Final

# The settings' ceilings the values are sized from (components/settings/load.py, mlflow_server.py).
MAX_WORKERS: Final = 32
"""`workers` is at most 32."""
STACKS_PER_HOST: Final = 2
"""Staging beside prod, or two test stacks: both count against each uid's one limit."""

UVICORN_WORKER_TASKS: Final = 45
"""One uvicorn worker: its event loop and AnyIO's pool of 40 threads for MLflow's synchronous
handlers, and a few threads of its own."""
POSTGRES_BACKGROUND_TASKS: Final = 64
"""Postgres beside its connections: checkpointer, background and WAL writers, the autovacuum
launcher and its 3 workers, up to 8 parallel workers, the replication launcher, the startup
shell and the health check's pg_isready; 64 leaves room to spare."""

MLFLOW_TASKS: Final = 4096
"""uid 10001 (server, gc, backups, database bootstrap). 32 workers need 32 x 45 = 1,440; a gc
run, a backup (pg_dump, tar, gzip) and the bootstrap a few more; twice that for a second stack
is under 3,000."""

POSTGRES_TASKS: Final = 2304
"""uid 999 (Postgres): one process per connection. max_connections is at most 980 (32 workers
with auth open 960, plus 20 spare), and twice (980 + 64) is 2,088. A fork refused at the limit
is one connection refused ("could not fork new process for connection"), never the data."""

PROXY_TASKS: Final = 1024
"""uid 10002 (Caddy). A Go program: one thread per CPU running Go code plus those blocked in a
system call, usually tens; Go itself stops at 10,000 threads. A thread it cannot create
crashes Caddy (the engine restarts it), so the margin is wide: 512 per stack."""
