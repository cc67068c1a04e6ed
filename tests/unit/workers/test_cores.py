"""workers.cores: the cores a process may use, from its affinity and its cgroup's CPU quota."""

from __future__ import annotations

import pytest

from workers import cores


@pytest.fixture
def two_cores(monkeypatch):
    monkeypatch.setattr(cores, "affinity_cores", lambda: 2)


def test_a_cgroup_v2_quota_caps_the_affinity(tmp_path, two_cores) -> None:
    (tmp_path / "cpu.max").write_text("50000 100000\n")
    assert cores.cgroup_quota_cores(tmp_path) == 0.5
    assert cores.usable_cores(tmp_path) == 0.5


def test_a_cgroup_v2_without_a_quota_leaves_the_affinity(tmp_path, two_cores) -> None:
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cores.cgroup_quota_cores(tmp_path) is None
    assert cores.usable_cores(tmp_path) == 2


def test_a_quota_above_the_affinity_does_not_raise_it(tmp_path, two_cores) -> None:
    (tmp_path / "cpu.max").write_text("400000 100000\n")
    assert cores.usable_cores(tmp_path) == 2


@pytest.mark.parametrize("quota, expected", [("150000", 1.5), ("-1", None)])
def test_a_cgroup_v1_quota(tmp_path, quota, expected) -> None:
    controller = tmp_path / "cpu,cpuacct"
    controller.mkdir()
    (controller / "cpu.cfs_quota_us").write_text(f"{quota}\n")
    (controller / "cpu.cfs_period_us").write_text("100000\n")
    assert cores.cgroup_quota_cores(tmp_path) == expected


def test_no_cgroup_files_mean_no_quota(tmp_path) -> None:
    assert cores.cgroup_quota_cores(tmp_path) is None


def test_the_affinity_mask_is_what_the_scheduler_allows() -> None:
    import os

    assert cores.affinity_cores() == len(os.sched_getaffinity(0))
