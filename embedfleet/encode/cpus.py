"""How many CPUs this process may really use: the fewest of its affinity mask and its
cgroup's CPU quota.

os.cpu_count() is the host's core count. In a container limited with `cpus: 2` (a cgroup
quota) on a 32-core host it says 32, and each worker process then runs 32 torch threads
that fight over 2 cores' worth of time. Imports nothing heavy: the worker command reads it
before any model is loaded.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # no such controller, or not readable: no limit known
        return None


def _quota(quota: int, period: int) -> int | None:
    if quota <= 0 or period <= 0:
        return None
    # A quota of 1.5 CPUs gives 2 threads: the half core is still there to use.
    return max(1, math.ceil(quota / period))


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> int | None:
    """CPUs the cgroup quota allows, rounded up; None when there is no quota.

    cgroup v2: `cpu.max` holds "<quota> <period>" or "max <period>". cgroup v1:
    `cpu/cpu.cfs_quota_us` (-1 for none) and `cpu/cpu.cfs_period_us` (also found as
    `cpu,cpuacct/`). Inside a container these are the container's own cgroup, mounted at
    /sys/fs/cgroup."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        fields = v2.split()
        if len(fields) == 2 and fields[0] != "max":
            try:
                return _quota(int(fields[0]), int(fields[1]))
            except ValueError:
                return None
        return None
    for controller in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        quota, period = _read(root / controller / "cpu.cfs_quota_us"), _read(root / controller / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            try:
                return _quota(int(quota), int(period))
            except ValueError:
                return None
    return None


def available_cpus(root: Path = CGROUP_ROOT, affinity: set[int] | None = None) -> int:
    """The CPUs this process can use: the affinity mask (taskset, `cpuset` limits) capped by
    the cgroup quota (`cpus:` in compose, `docker run --cpus`). At least 1."""
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):  # not on Linux
            affinity = set(range(os.cpu_count() or 1))
    cpus = len(affinity) or (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(root)
    return max(1, min(cpus, limit) if limit else cpus)
