"""Untrusted programs are parsed, validated, expanded and transpiled in sandbox processes.

A submitted OpenQASM program can be built to exhaust whatever handles it: memory (gate
definitions that expand exponentially), time (loops, huge transpiler inputs), the parser's
stack. The static count (`static_count`) refuses what it can see; everything else happens
in a pool of reusable sandbox processes with hard bounds, so the worst a program can do is
lose its sandbox:

* wall time: the parent waits `wall_s`, then SIGKILLs the process (SandboxTimeout);
* CPU time: RLIMIT_CPU, moved `cpu_s` past the process's usage before each program, so the
  kernel stops a runaway with SIGXCPU (SandboxCpuExceeded: not tried again, the next
  attempt would spend the same CPU);
* memory: RLIMIT_AS at the process's own baseline after start-up (the imported libraries)
  plus `memory_mb`: an allocation past it fails (MemoryError: ResourceLimitExceeded) or,
  in native code, aborts the process (SandboxCrashed);
* output: a prepared job larger than `output_mb` is refused (ResourceLimitExceeded);
* no core dumps (RLIMIT_CORE 0), a scratch working directory, and no include search path
  (only the parsers' own copies of qelib1.inc and stdgates.inc resolve).

Processes are started as fresh interpreters (`python -m workers.circuits.sandbox`: a fork
immediately followed by exec, the same as multiprocessing's "spawn" start method, so nothing
of the worker, Aer's threads included, is inherited); multiprocessing's own spawn would
re-import the worker's `__main__` (the Faust CLI) in every sandbox. The parent talks to
each over two pipes with length-prefixed frames: a pickled request one way (the parent is
trusted), JSON plus the prepared job's own bytes (QPY + JSON) back, so nothing the sandbox
returns is unpickled. A killed or timed-out process is replaced at once by a new one, which
warms up while the worker goes on.

`SandboxPool.run` is a coroutine: the blocking exchange runs on the pool's own threads, so
the worker's event loop never waits on a sandbox.

A pool's `kind` says what its processes do: PREPARE (the above) or SIMULATE (local simulator
calls, workers.execution.simulator, with the setting `simulator_process`): same start-up,
bounds, replacement and typed failures; a SIMULATE request carries its own wall and CPU
bound (the backend call's timeout).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import logging
import os
import pickle
import queue
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from cachetools import LRUCache

import workers
from workers import errors
from workers.errors import (
    InvalidJob,
    QlaneError,
    ResourceLimitExceeded,
    SandboxCpuExceeded,
    SandboxCrashed,
    SandboxTimeout,
    UnknownBackend,
)
from workers.jobs import JobSpec
from workers.limits import Limits

log = logging.getLogger("qlane.sandbox")

PREPARE = "prepare"  # parse, validate, transpile (Preparer)
SIMULATE = "simulate"  # run prepared jobs on a local simulator (execution.simulator)
# What a process of each kind answers, for an answer past the output bound (a simulation's
# counts were blamed on the program).
ANSWERS = {PREPARE: "prepared job is", SIMULATE: "simulation's counts and results are"}

_HEADER = struct.Struct(">I")
_READY = b"ready"
# What a sandbox process must not inherit: thread pools that would multiply its address
# space (each thread reserves a stack) and its CPU use.
_SANDBOX_ENV = {
    "RAYON_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "QISKIT_PARALLEL": "FALSE",
    "QISKIT_NUM_PROCS": "1",
    "PYTHONDONTWRITEBYTECODE": "1",
}
_SIGNALS = {
    signal.SIGXCPU: "its CPU time bound",
    signal.SIGKILL: "SIGKILL (killed, e.g. out of memory)",
    signal.SIGSEGV: "SIGSEGV (a crash in native code, e.g. a stack overflow)",
    signal.SIGABRT: "SIGABRT (native code aborted, e.g. a failed allocation)",
    signal.SIGBUS: "SIGBUS",
}


@dataclass(frozen=True)
class SandboxBounds:
    wall_s: float = 30.0
    cpu_s: int = 10
    memory_mb: int = 1024
    output_mb: int = 16
    startup_s: float = 60.0  # a fresh process imports Qiskit and warms up (5-10 s idle)

    @property
    def output_bytes(self) -> int:
        return self.output_mb * 2**20


@dataclass(frozen=True)
class BackendView:
    """What preparing a job needs of its backend: no simulator, no credentials, no SDK."""

    name: str
    num_qubits: int
    calibration_version: str
    target: object  # qiskit.transpiler.Target
    layout_method: str | None = None  # "noise_aware" on device backends (backends.layout)

    @classmethod
    def of(cls, backend) -> BackendView:
        """The view of a registry's backend, one per (name, calibration, target object):
        its pickled form (the Target is most of it, 6-17 KB, ~10 ms) is made once."""
        key = (backend.name, backend.calibration_version, id(backend.target))
        view = _VIEWS.get(key)
        if view is None or view.target is not backend.target:
            view = _VIEWS[key] = cls(backend.name, backend.num_qubits,
                                     backend.calibration_version, backend.target,
                                     getattr(backend, "layout_method", None))
        return view

    def __reduce__(self):
        blob = self.__dict__.get("_blob")
        if blob is None:
            blob = pickle.dumps((self.name, self.num_qubits, self.calibration_version,
                                 self.target, self.layout_method),
                                protocol=pickle.HIGHEST_PROTOCOL)
            object.__setattr__(self, "_blob", blob)
        return (_view_from_blob, (blob,))


_VIEWS: LRUCache = LRUCache(maxsize=64)


def _view_from_blob(blob: bytes) -> BackendView:
    """In the sandbox: the view a blob describes, unpickled once per distinct blob."""
    key = hashlib.sha256(blob).digest()
    view = _VIEWS.get(key)
    if view is None:
        view = _VIEWS[key] = BackendView(*pickle.loads(blob))
    return view


class _OneBackend:
    """The registry a sandboxed prepare() sees: the job's backend, as the worker has it."""

    def __init__(self, view: BackendView) -> None:
        self.view = view

    def get(self, name: str) -> BackendView:
        if name != self.view.name:
            raise UnknownBackend(f"unknown backend {name!r}")
        return self.view


@dataclass(frozen=True)
class SandboxRequest:
    """What to prepare: the job, the limits, and what only the worker has: its backend's
    view and readout calibration (measured there, with Aer, and cached)."""

    spec: JobSpec
    limits: Limits
    backend: BackendView
    readout_calibration: object | None = None  # workers.mitigation.readout.ReadoutCalibration
    fold_seed: int | None = None


@dataclass(frozen=True)
class LoadCheck:
    """A prepared job read from a stage topic, to be loaded here before the worker loads it:
    what its circuits take loaded (its QPY can declare far more than its bytes), refused past
    `max_mb`."""

    data: bytes
    max_mb: int


@dataclass(frozen=True)
class Prepared:
    """A prepared job as its bytes (PreparedJob.to_bytes) and the facts the worker needs."""

    data: bytes
    backend: str
    shots: int
    num_tasks: int
    transpile_cache_hit: bool
    result_floor_bytes: int = 0  # PreparedJob.result_floor_bytes

    @property
    def tasks(self) -> range:
        """The task indices (what cost estimates count)."""
        return range(self.num_tasks)

    def to_bytes(self) -> bytes:
        return self.data

    @classmethod
    def of(cls, prepared) -> Prepared:
        """From a PreparedJob."""
        return cls(prepared.to_bytes(), prepared.backend, prepared.shots, len(prepared.tasks),
                   prepared.transpile_cache_hit, prepared.result_floor_bytes())


# --- the work itself (in a sandbox, or in the worker when the sandbox is off) ----------


class _GivenCalibration:
    """A readout cache that hands out the calibration the worker measured."""

    def __init__(self, calibration) -> None:
        self.calibration = calibration

    def get(self, backend):
        return self.calibration


class Preparer:
    """prepare() with this process's own transpile cache (and the parse cache)."""

    def __init__(self) -> None:
        from workers.backends.layout import DeviceTranspileCache

        self.cache = DeviceTranspileCache()  # the worker's: noise-aware layout on devices

    def prepare(self, request: SandboxRequest) -> Prepared:
        from workers.execution.preparation import prepare

        readout = None
        if request.readout_calibration is not None:
            readout = _GivenCalibration(request.readout_calibration)
        prepared = prepare(request.spec, _OneBackend(request.backend), self.cache,
                           request.limits, readout, fold_seed=request.fold_seed)
        return Prepared.of(prepared)

    def handle(self, request: SandboxRequest | LoadCheck) -> tuple[dict, bytes]:
        # The process runs this module as __main__: requests arrive as the package's classes.
        from workers.circuits import sandbox

        if isinstance(request, sandbox.LoadCheck):
            return self.check_load(request)
        prepared = self.prepare(request)
        return {
            "ok": True, "backend": prepared.backend, "shots": prepared.shots,
            "num_tasks": prepared.num_tasks, "transpile_cache_hit": prepared.transpile_cache_hit,
            "result_floor_bytes": prepared.result_floor_bytes,
        }, prepared.data

    @staticmethod
    def check_load(request: LoadCheck) -> tuple[dict, bytes]:
        """Load the prepared job as the worker would (not cached here) and measure what its
        circuits hold: the memory this process gained, which the worker would keep."""
        import gc

        from workers.execution.preparation import PreparedJob

        gc.collect()
        before = _resident_bytes()
        loaded = PreparedJob.from_bytes(request.data, cached=False)
        grown = max(0, _resident_bytes() - before)
        del loaded
        gc.collect()
        if grown > request.max_mb * 2**20:
            raise ResourceLimitExceeded(
                f"the prepared job's circuits take {grown / 2**20:.0f} MB loaded > "
                f"{request.max_mb} MB (a stage record declaring far more than its bytes)")
        return {"ok": True, "grown_bytes": grown}, b""

    def warm_up(self) -> None:
        """Load what the first real program would: both parsers and the transpiler."""
        from qiskit.transpiler import Target, generate_preset_pass_manager

        from workers.circuits.parsing import parse_circuit
        from workers.execution import preparation  # noqa: F401  (and mitigation with it)

        parse_circuit('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[2];\nh q[0];\n')
        bell = parse_circuit('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\n'
                             "bit[2] c;\nh q[0];\ncx q[0], q[1];\nc = measure q;\n")
        target = Target.from_configuration(["cx", "rz", "sx", "x", "measure"], num_qubits=2)
        generate_preset_pass_manager(optimization_level=1, target=target).run(bell)


# --- the sandbox process -----------------------------------------------------------


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _resident_bytes() -> int:
    """This process's resident memory now (not its peak, which an earlier program set)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _cpu_used() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _frame(header: dict, payload: bytes = b"") -> bytes:
    encoded = json.dumps(header).encode()
    return _HEADER.pack(len(encoded)) + encoded + payload


def _error_frame(error: BaseException) -> dict:
    # The address-space bound also shows as ENOMEM from the system (a thread, an mmap).
    if isinstance(error, MemoryError) or (isinstance(error, OSError)
                                          and error.errno == errno.ENOMEM):
        return {"ok": False, "error": "ResourceLimitExceeded", "recycle": True,
                "message": "the program ran out of memory (the sandbox's bound)"}
    if isinstance(error, RecursionError):
        return {"ok": False, "error": "ResourceLimitExceeded", "recycle": True,
                "message": "the program ran out of stack (nesting too deep)"}
    name = error.reason if isinstance(error, QlaneError) else type(error).__name__
    return {"ok": False, "error": name, "message": str(error)[:500]}


# A sandbox process (either kind) that has kept more than this share of its memory bound
# after a request is replaced (the next request waits for its start).
RECYCLE_FROM = 0.5


def _handler(kind: str):
    """What a sandbox process of this kind does with a request (Preparer.handle, or
    workers.execution.simulator.Simulator.handle)."""
    if kind == PREPARE:
        return Preparer()
    if kind == SIMULATE:
        from workers.execution.simulator import Simulator

        return Simulator()
    raise ValueError(f"unknown sandbox kind {kind!r}")


def serve(reader: Connection, writer: Connection, bounds: SandboxBounds,
          kind: str = PREPARE) -> None:
    """The sandbox's loop: warm up, fix the bounds, then handle one request at a time
    (a request may bring its own CPU bound: `cpu_s`)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    handler = _handler(kind)
    handler.warm_up()
    limit = _address_space() + bounds.memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    _, cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)
    writer.send_bytes(_READY)
    while True:
        try:
            message = reader.recv_bytes()
        except EOFError:  # the worker is gone
            return
        request = pickle.loads(message)
        soft = int(_cpu_used()) + (getattr(request, "cpu_s", None) or bounds.cpu_s) + 1
        if cpu_hard != resource.RLIM_INFINITY:
            soft = min(soft, cpu_hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
        try:
            header, payload = handler.handle(request)
        except BaseException as error:  # noqa: BLE001 - every failure goes back typed
            header = _error_frame(error)
            writer.send_bytes(_frame(header))
            if header.get("recycle"):
                return  # a process that ran out of memory or stack is not reused
            continue
        if len(payload) > bounds.output_bytes:
            writer.send_bytes(_frame({
                "ok": False, "error": "ResourceLimitExceeded",
                "message": f"the {ANSWERS[kind]} {len(payload)} bytes > "
                           f"{bounds.output_bytes} (QLANE_SANDBOX_OUTPUT_MB)",
            }))
            continue
        grown = _address_space() - (limit - bounds.memory_mb * 2**20)
        header = {**header, "grown_mb": grown // 2**20}
        if grown > bounds.memory_mb * 2**20 * RECYCLE_FROM:
            # What a process keeps between requests (a prepare process's parse and transpile
            # caches, a simulator process's devices and their caches) is counted by entries,
            # not by what they take: a prepare process grew 60 MiB a 245 KB program until its
            # bound, and the next program, of any tenant, was refused as out of memory (a
            # red-team run). Replaced now, each request has the bound.
            header = {**header, "recycle": True}
            writer.send_bytes(_frame(header, payload))
            return
        writer.send_bytes(_frame(header, payload))


def _die_with_parent() -> None:
    """SIGKILL this process when the worker that started it dies (Linux prctl)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


# Vendor SDKs a sandbox never runs: mitiq imports them only to know their circuit types
# (braket alone is a third of the sandbox's start-up). Their import fails here, as if absent.
_NOT_IN_SANDBOX = ("braket", "pyquil", "qibo", "pennylane")


def main(argv: list[str]) -> None:
    for name in _NOT_IN_SANDBOX:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    parent = os.getppid()
    _die_with_parent()
    # A stop signal for the worker's whole process group or cgroup (Ctrl-C, `kill -TERM
    # -pgid`, systemd's default KillMode) reached its sandboxes too: the program under way
    # failed as SandboxCrashed, was tried again in a new sandbox while the worker stopped, and
    # the stop ran into its 15 s watchdog (a red-team run). The worker ends its sandboxes
    # itself: SIGKILL from the pool, or PR_SET_PDEATHSIG when it exits.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if os.getppid() != parent:  # the worker died before prctl took effect
        return
    read_fd, write_fd = int(argv[0]), int(argv[1])
    bounds = SandboxBounds(**json.loads(argv[2]))
    kind = argv[3] if len(argv) > 3 else PREPARE
    # Stray prints go to the log, never into the protocol.
    sys.stdout = sys.stderr
    serve(Connection(read_fd, writable=False), Connection(write_fd, readable=False), bounds,
          kind)


# --- the parent side ---------------------------------------------------------------


def _decode_reply(reply: bytes) -> tuple[dict, bytes]:
    (length,) = _HEADER.unpack_from(reply)
    return json.loads(reply[_HEADER.size : _HEADER.size + length]), reply[_HEADER.size + length :]


def _outcome(header: dict, payload: bytes) -> Prepared:
    if header.get("ok"):
        return Prepared(payload, str(header["backend"]),
                        int(header["shots"]), int(header["num_tasks"]),
                        bool(header["transpile_cache_hit"]),
                        int(header.get("result_floor_bytes", 0)))
    raise rebuild_error(str(header.get("error")), str(header.get("message", "")))


def rebuild_error(name: str, message: str) -> Exception:
    """The typed error the sandbox reported; an untyped one as InvalidJob naming it."""
    cls = getattr(errors, name, None)
    if isinstance(cls, type) and issubclass(cls, QlaneError):
        return cls(message)
    return InvalidJob(f"{name}: {message}"[:500])


@dataclass
class _Process:
    process: subprocess.Popen
    reader: Connection
    writer: Connection
    ready: bool = False
    jobs: int = 0

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for end in (self.reader, self.writer):
            try:
                end.close()
            except OSError:
                pass

    def death(self) -> str:
        try:
            code = self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return "stopped answering"
        if code < 0:
            return f"was killed by {_SIGNALS.get(-code, signal.Signals(-code).name)}"
        return f"exited with status {code}"


@dataclass
class SandboxPool:
    """`size` reusable sandbox processes; `run` prepares a job in one of them."""

    bounds: SandboxBounds = field(default_factory=SandboxBounds)
    size: int = 1
    log_path: Path | None = None  # where the processes' stderr goes (None: inherited)
    kind: str = PREPARE  # what its processes do: PREPARE or SIMULATE
    _idle: queue.Queue = field(init=False)
    _threads: ThreadPoolExecutor = field(init=False)
    _workdir: tempfile.TemporaryDirectory = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _all: list = field(default_factory=list, init=False)
    started: int = field(default=0, init=False)  # processes started, replacements included
    replaced: int = field(default=0, init=False)  # processes killed or lost and replaced
    closed: bool = field(default=False, init=False)
    # time.monotonic() when its last exchange ended (0.0: none yet)
    last_used: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        self._idle = queue.Queue()
        self._threads = ThreadPoolExecutor(self.size, thread_name_prefix="qlane-sandbox")
        self._workdir = tempfile.TemporaryDirectory(prefix="qlane-sandbox-")
        for _ in range(self.size):
            self._idle.put(self._spawn())

    def _spawn(self) -> _Process:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        root = str(Path(workers.__file__).resolve().parents[1])
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, **_SANDBOX_ENV,
               "PYTHONPATH": root + (os.pathsep + path if path else "")}
        stderr = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115
        try:
            process = subprocess.Popen(
                [sys.executable, "-m", "workers.circuits.sandbox", str(to_child_r),
                 str(from_child_w), json.dumps(self.bounds.__dict__), self.kind],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL,
                stdout=stderr, stderr=stderr, cwd=self._workdir.name, env=env,
            )
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
            if stderr is not None:
                stderr.close()
        slot = _Process(process, Connection(from_child_r, writable=False),
                        Connection(to_child_w, readable=False))
        with self._lock:
            self.started += 1
            self._all.append(slot)
        return slot

    def _replace(self, slot: _Process) -> None:
        slot.kill()
        with self._lock:
            self.replaced += 1
            if slot in self._all:
                self._all.remove(slot)
        if not self.closed:
            self._idle.put(self._spawn())

    def _ready(self) -> _Process:
        """An idle process that has started; waits as long as start-up takes (a loaded host
        can take minutes), replaces processes that die starting, gives up after 3 in a row."""
        deaths = 0
        while True:
            slot = self._idle.get()
            if slot.ready:
                return slot
            started = time.monotonic()
            try:
                while not slot.reader.poll(self.bounds.startup_s):
                    log.warning("a sandbox process has been starting for %.0fs",
                                time.monotonic() - started)
                if slot.reader.recv_bytes(64) == _READY:
                    slot.ready = True
                    return slot
            except (OSError, EOFError):
                pass
            deaths += 1
            reason = slot.death()
            log.error("a sandbox process %s while starting", reason)
            self._replace(slot)
            if deaths >= 3:
                raise RuntimeError(f"sandbox processes die while starting (last {reason})")

    def wait_started(self) -> None:
        """Block until an idle process has started (else the next call waits for it)."""
        self._idle.put(self._ready())

    def call(self, request: SandboxRequest) -> Prepared:
        """Prepare in a sandbox (blocking); typed errors for every way it can end."""
        return _outcome(*self.exchange(request))

    def exchange(self, request: object, wall_s: float | None = None) -> tuple[dict, bytes]:
        """One request to a sandbox process and its answer (blocking), bounded by `wall_s`
        (default: the pool's bound); typed errors for every way it can end."""
        wall_s = self.bounds.wall_s if wall_s is None else wall_s
        message = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        slot = self._ready()
        started = time.monotonic()
        try:
            return self._exchanged(slot, message, wall_s, started)
        finally:
            self.last_used = time.monotonic()

    def _exchanged(self, slot, message: bytes, wall_s: float,
                   started: float) -> tuple[dict, bytes]:
        try:
            slot.writer.send_bytes(message)
            if not slot.reader.poll(wall_s):
                self._replace(slot)
                raise SandboxTimeout(
                    f"the sandbox took longer than {wall_s:g}s "
                    f"(its wall-time bound): sandbox killed"
                )
            reply = slot.reader.recv_bytes(self.bounds.output_bytes + 2**16)
        except (EOFError, BrokenPipeError, ConnectionResetError):
            reason = slot.death()
            self._replace(slot)
            elapsed = time.monotonic() - started
            if "CPU time" in reason:
                raise SandboxCpuExceeded(
                    f"the sandbox {reason} ({self.bounds.cpu_s}s) after {elapsed:.1f}s"
                ) from None
            raise SandboxCrashed(
                f"the sandbox {reason} after {elapsed:.1f}s on the program"
            ) from None
        except OSError:  # a reply past maxlength: the connection is out of step now
            self._replace(slot)
            raise ResourceLimitExceeded(
                f"the {ANSWERS[self.kind]} over {self.bounds.output_bytes} bytes "
                f"(QLANE_SANDBOX_OUTPUT_MB)"
            ) from None
        slot.jobs += 1
        try:
            header, payload = _decode_reply(reply)
        except (ValueError, struct.error):
            self._replace(slot)
            raise SandboxCrashed("the sandbox sent a reply that does not decode") from None
        if header.get("recycle"):  # it ran out of memory or stack and exits: not reused
            if header.get("ok"):
                log.info("a %s sandbox process kept %s MB past its start, over half its "
                         "bound: replaced", self.kind, header.get("grown_mb"))
            self._replace(slot)
        else:
            self._idle.put(slot)
        return header, payload

    async def run(self, request: SandboxRequest) -> Prepared:
        return await asyncio.get_running_loop().run_in_executor(self._threads, self.call,
                                                                request)

    async def run_exchange(self, request: object,
                           wall_s: float | None = None) -> tuple[dict, bytes]:
        return await asyncio.get_running_loop().run_in_executor(
            self._threads, self.exchange, request, wall_s)

    def idle(self) -> bool:
        """Whether every process waits for a request (none is running one or starting anew)."""
        return not self.closed and self._idle.qsize() >= self.size

    def pids(self) -> list[int]:
        with self._lock:
            return [slot.process.pid for slot in self._all]

    def close(self) -> None:
        self.closed = True
        with self._lock:
            slots, self._all = list(self._all), []
        for slot in slots:
            slot.kill()
        self._threads.shutdown(wait=False, cancel_futures=True)
        self._workdir.cleanup()


if __name__ == "__main__":
    main(sys.argv[1:])
