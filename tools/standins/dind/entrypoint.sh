#!/bin/sh
# The node's PID 1 (under tini): makes /sys, /proc/sys and the cgroup controllers writable, then runs dockerd.
#
# The cluster tool cannot use --privileged here: this engine's own bounding set lacks
# CAP_SYS_RESOURCE, and --privileged asks runc for every capability the kernel knows, so
# it fails with "unable to apply caps: operation not permitted". Without it, Docker mounts
# /sys, /proc/sys and the cgroup v1 controllers read-only; CAP_SYS_ADMIN (granted explicitly)
# lets the node remount them read-write, which is what --privileged would have given
# (dockerd sets /proc/sys/net/... for its bridges; `--security-opt systempaths=unconfined`
# would do it too, but is a docker CLI option the Docker SDK does not have). The
# controllers are the node container's own cgroups, so the nested engine's containers
# nest under the node's cgroup (and its limits) rather than beside the host's.
set -eu

mount -o remount,bind,rw /sys
mount -o remount,bind,rw /proc/sys
if mountpoint -q /sys/fs/cgroup; then
    mount -o remount,bind,rw /sys/fs/cgroup
fi
awk '$2 ~ "^/sys/fs/cgroup/" { print $2 }' /proc/self/mounts | while read -r controller; do
    mount -o remount,bind,rw "$controller"
done

exec dockerd "$@"
