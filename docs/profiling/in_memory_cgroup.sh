#!/usr/bin/env bash
# Runs a command in a cgroup-v1 memory group limited to LIMIT_MB (no swap), as on a small machine,
# then prints the group's highest usage, how often the limit was hit and whether the OOM killer
# ran. Needs root and /sys/fs/cgroup/memory.
# Usage: docs/profiling/in_memory_cgroup.sh LIMIT_MB command...
set -u
limit=$1
shift
group=/sys/fs/cgroup/memory/glimpse-limit-$$
mkdir -p "$group"
echo $((limit * 1024 * 1024)) > "$group/memory.limit_in_bytes"
echo 0 > "$group/memory.swappiness" 2>/dev/null
echo $$ > "$group/cgroup.procs"
"$@"
rc=$?
echo "cgroup max_usage_mb $(($(cat "$group/memory.max_usage_in_bytes") / 1048576))" \
  "failcnt $(cat "$group/memory.failcnt")" \
  "oom_kill $(awk '/oom_kill /{print $2}' "$group/memory.oom_control") rc $rc"
echo $$ > /sys/fs/cgroup/memory/cgroup.procs
rmdir "$group"
exit $rc
