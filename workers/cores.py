"""How many cores this process may use: its CPU affinity, capped by a cgroup CPU quota.

`os.cpu_count()` counts the machine's cores; a container limited to one core (a Kubernetes
CPU limit, `docker run --cpus 1`) still sees them all. The scheduler's affinity mask and the
cgroup's quota are what bound the process, so a decision such as "run the simulation in a
second process" reads them instead.
"""

from __future__ import annotations

import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def affinity_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cgroup_quota_cores(root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores, or None when there is none.

    cgroup v2: `cpu.max` holds "<quota> <period>" or "max <period>"; v1: `cpu.cfs_quota_us`
    (-1 = none) and `cpu.cfs_period_us`. Only the files at `root` are read (inside a container
    they are the container's own)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        if quota == "max":
            return None
        return int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((v1 / "cpu.cfs_quota_us").read_text())
            period_us = int((v1 / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def usable_cores(root: Path = CGROUP_ROOT) -> float:
    """The cores this process may keep busy at once: min(affinity, cgroup quota)."""
    cores: float = affinity_cores()
    quota = cgroup_quota_cores(root)
    return cores if quota is None else min(cores, quota)
