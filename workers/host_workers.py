"""The qlane workers that share this host's cores.

A worker decides by itself whether its simulation runs in a process of its own
(`simulator_process=auto`): that pays when the worker has a second core to itself, where the
process overlaps the worker's Kafka work. Several workers on one host share its cores, and
their simulator processes then only compete with the workers for them (docs/performance.md,
"Workers that share a host's cores").

So each worker registers itself on the host: a file named by its pid in a directory (by
default on tmpfs, one per user), holding the process's start time and its CPU affinity. It
counts the live registered workers whose affinity overlaps its own; a file whose process is
gone (killed, even with SIGKILL) is recognised by the start time and removed by whoever
reads it. Containers have their own tmpfs and their own quota, so a worker counts the
siblings of its own container.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from workers.cores import usable_cores

log = logging.getLogger("qlane")

# Reading a handful of small files; the count is used once per execute batch.
REFRESH_S = 2.0


def default_directory() -> Path:
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir())
    return base / f"qlane-workers-{os.getuid()}"


def affinity() -> frozenset[int]:
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux: every core
        return frozenset(range(os.cpu_count() or 1))


def start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), which
    tells a live worker from a later process that got its pid; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    except OSError:  # no /proc: fall back to whether the pid is taken at all
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return stat[stat.rfind(")") + 2:].split()[19]


class HostWorkers:
    """This worker's entry in the host's registry, and the count of workers it shares with."""

    def __init__(self, directory: Path | None = None, pid: int | None = None,
                 cores: Callable[[], float] = usable_cores,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.directory = directory or default_directory()
        self.pid = pid or os.getpid()
        self.cpus = affinity()
        self._cores = cores
        self._clock = clock
        self._counted_at: float | None = None
        self._count = 1
        self._usable_cores = 1.0  # read with the count: the cgroup files are not per-batch I/O
        self._warned = False
        self._unusable = False  # not joined: its entries are not read either

    @property
    def entry(self) -> Path:
        return self.directory / str(self.pid)

    def join(self) -> HostWorkers:
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            if self.directory.stat().st_uid != os.getuid():
                # Another user's directory: its entries could make this worker count anything.
                raise PermissionError(f"{self.directory} belongs to another user")
            temporary = self.directory / f".{self.pid}.tmp"
            temporary.write_text(json.dumps(
                {"start": start_ticks(self.pid), "cpus": sorted(self.cpus)}))
            temporary.replace(self.entry)
        except OSError as error:
            self._unusable = True
            self._fail(error)
        self._counted_at = None
        return self

    def leave(self) -> None:
        try:
            self.entry.unlink(missing_ok=True)
        except OSError:
            pass

    def sharing(self, fresh: bool = False) -> int:
        """How many registered workers (this one included) share a core with this one; read
        again at most every REFRESH_S, or now when `fresh`."""
        now = self._clock()
        if not fresh and self._counted_at is not None and now - self._counted_at < REFRESH_S:
            return self._count
        self._counted_at = now
        self._usable_cores = self._cores()
        if self._unusable:
            self._count = 1
            return 1
        count = 1
        try:
            entries = list(self.directory.iterdir())
        except OSError as error:
            self._fail(error)
            entries = []
        else:
            if self.entry not in entries:  # removed meanwhile (a tmp cleaner, an operator)
                self.join()
                self._counted_at = now
        for path in entries:
            if not path.name.isdigit() or int(path.name) == self.pid:
                continue
            cpus = self._live_cpus(path)
            if cpus is not None and cpus & self.cpus:
                count += 1
        self._count = count
        return count

    def cores_per_worker(self) -> float:
        sharing = self.sharing()  # first: it reads the cores again when it counts
        return self._usable_cores / sharing

    def _live_cpus(self, path: Path) -> frozenset[int] | None:
        """The entry's CPUs while its worker lives; a dead worker's entry is removed."""
        try:
            entry = json.loads(path.read_text())
            recorded, cpus = entry["start"], frozenset(int(c) for c in entry["cpus"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            return None  # half-written or foreign: not counted, left to its owner
        current = start_ticks(int(path.name))
        if current is None or (recorded and current and current != recorded):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass
            return None
        return cpus

    def _fail(self, error: OSError) -> None:
        if not self._warned:
            log.warning("host workers: registry %s unusable (%s); this worker counts itself "
                        "alone on the host", self.directory, error)
        self._warned = True
