"""available_cpus: the affinity mask capped by the cgroup's CPU quota, read from fake cgroup files."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedfleet.encode.cpus import available_cpus, cgroup_cpu_limit


def v2(root: Path, cpu_max: str) -> Path:
    (root / "cpu.max").write_text(cpu_max + "\n")
    return root


def v1(root: Path, quota: str, period: str, controller: str = "cpu") -> Path:
    (root / controller).mkdir()
    (root / controller / "cpu.cfs_quota_us").write_text(quota + "\n")
    (root / controller / "cpu.cfs_period_us").write_text(period + "\n")
    return root


@pytest.mark.parametrize(("cpu_max", "limit"), [
    ("200000 100000", 2),   # compose `cpus: 2`
    ("150000 100000", 2),   # 1.5 CPUs: the half core is worth a thread
    ("50000 100000", 1),    # half a CPU: still one thread
    ("max 100000", None),   # no quota
    ("garbage", None),
])
def test_cgroup_v2_cpu_max(tmp_path: Path, cpu_max: str, limit: int | None) -> None:
    """cgroup v2's cpu.max "<quota> <period>" gives quota/period rounded up; "max" is no limit."""
    assert cgroup_cpu_limit(v2(tmp_path, cpu_max)) == limit


@pytest.mark.parametrize("controller", ["cpu", "cpu,cpuacct"])
def test_cgroup_v1_cfs_quota(tmp_path: Path, controller: str) -> None:
    """cgroup v1's cfs_quota_us / cfs_period_us, under either controller directory name; -1 is no limit."""
    assert cgroup_cpu_limit(v1(tmp_path, "300000", "100000", controller)) == 3
    (tmp_path / controller / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_limit(tmp_path) is None


def test_no_cgroup_files_mean_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path) is None


def test_the_quota_caps_the_affinity_mask(tmp_path: Path) -> None:
    """32 host cores in the mask, a 2-CPU quota: 2. A quota above the mask leaves the mask."""
    assert available_cpus(tmp_path, affinity={0, 1, 2}) == 3
    assert available_cpus(v2(tmp_path, "200000 100000"), affinity=set(range(32))) == 2
    (tmp_path / "cpu.max").write_text("800000 100000\n")
    assert available_cpus(tmp_path, affinity={4, 5}) == 2


def test_this_process_gets_at_least_one(tmp_path: Path) -> None:
    """With the real affinity mask and no quota: the mask's size, never 0."""
    import os

    assert available_cpus(tmp_path) == len(os.sched_getaffinity(0)) >= 1
