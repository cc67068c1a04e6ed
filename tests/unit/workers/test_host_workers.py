"""HostWorkers: the live workers registered on a host that share this worker's cores."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from workers.host_workers import REFRESH_S, HostWorkers, start_ticks


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sleeper():
    """A live process that is not this one (another worker, for the registry)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def register(directory, pid: int, cpus, start: str | None = None) -> None:
    directory.mkdir(exist_ok=True)
    (directory / str(pid)).write_text(json.dumps(
        {"start": start_ticks(pid) if start is None else start, "cpus": sorted(cpus)}))


def test_a_worker_alone_counts_itself_and_leaves_no_entry_behind(tmp_path):
    host = HostWorkers(tmp_path / "reg", cores=lambda: 2.0).join()
    assert host.entry.exists()
    assert json.loads(host.entry.read_text())["start"] == start_ticks(os.getpid())
    assert host.sharing() == 1 and host.cores_per_worker() == 2.0
    host.leave()
    assert not host.entry.exists()


def test_a_live_worker_on_the_same_cores_is_counted(tmp_path, sleeper):
    host = HostWorkers(tmp_path, cores=lambda: 2.0).join()
    register(tmp_path, sleeper.pid, host.cpus)
    assert host.sharing() == 2 and host.cores_per_worker() == 1.0
    assert (tmp_path / str(sleeper.pid)).exists()


def test_a_worker_pinned_to_other_cores_is_not_counted(tmp_path, sleeper):
    host = HostWorkers(tmp_path).join()
    register(tmp_path, sleeper.pid, {max(host.cpus) + 1})
    assert host.sharing() == 1


def test_a_dead_workers_entry_is_not_counted_and_is_removed(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    host = HostWorkers(tmp_path).join()
    register(tmp_path, gone.pid, host.cpus, start="12345")
    assert host.sharing() == 1
    assert not (tmp_path / str(gone.pid)).exists()


def test_an_entry_whose_pid_now_belongs_to_a_later_process_is_removed(tmp_path, sleeper):
    host = HostWorkers(tmp_path).join()
    register(tmp_path, sleeper.pid, host.cpus, start="1")  # not the sleeper's start time
    assert host.sharing() == 1
    assert not (tmp_path / str(sleeper.pid)).exists()


def test_unreadable_or_foreign_entries_are_not_counted(tmp_path, sleeper):
    host = HostWorkers(tmp_path).join()
    (tmp_path / str(sleeper.pid)).write_text("{half a")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / f".{sleeper.pid}.tmp").write_text("{}")
    assert host.sharing() == 1


def test_the_count_is_read_again_only_after_the_refresh_interval(tmp_path, sleeper):
    clock = Clock()
    host = HostWorkers(tmp_path, clock=clock).join()
    assert host.sharing() == 1
    register(tmp_path, sleeper.pid, host.cpus)
    clock.now += REFRESH_S / 2
    assert host.sharing() == 1
    assert host.sharing(fresh=True) == 2  # read now when asked
    clock.now += REFRESH_S
    assert host.sharing() == 2
    sleeper.kill()
    sleeper.wait()
    clock.now += REFRESH_S
    assert host.sharing() == 1


def test_an_unusable_directory_makes_the_worker_count_itself_alone(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with caplog.at_level(logging.WARNING, logger="qlane"):
        host = HostWorkers(blocker / "reg", cores=lambda: 2.0).join()
        assert host.sharing() == 1 and host.cores_per_worker() == 2.0
    assert "counts itself alone" in caplog.text


def test_a_directory_of_another_user_is_not_trusted(tmp_path, sleeper, monkeypatch, caplog):
    host = HostWorkers(tmp_path)
    register(tmp_path, sleeper.pid, host.cpus)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(tmp_path).st_uid + 1)
    with caplog.at_level(logging.WARNING, logger="qlane"):
        host.join()
        assert host.sharing() == 1  # the planted entry is not read
    assert "belongs to another user" in caplog.text


def test_a_worker_whose_entry_was_removed_registers_again(tmp_path):
    clock = Clock()
    host = HostWorkers(tmp_path, clock=clock).join()
    host.entry.unlink()
    clock.now += REFRESH_S
    assert host.sharing() == 1
    assert host.entry.exists()
