"""The sandbox pool (workers/circuits/sandbox.py): real sandbox processes, real bounds."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.unit.workers.conftest import ANSATZ3_QASM3, BELL_QASM2
from workers.backends.registry import BackendRegistry
from workers.circuits.sandbox import (
    BackendView,
    Prepared,
    SandboxBounds,
    SandboxPool,
    SandboxRequest,
)
from workers.circuits.transpile import TranspileCache
from workers.errors import (
    CircuitTooLarge,
    ForbiddenInclude,
    ResourceLimitExceeded,
    SandboxCrashed,
    SandboxTimeout,
)
from workers.execution.preparation import PreparedJob, prepare
from workers.jobs import JobSpec
from workers.limits import Limits


def doubling(levels: int) -> str:
    lines = ['OPENQASM 2.0;', 'include "qelib1.inc";', "qreg q[2];",
             "gate g0 a, b { cx a, b; cx b, a; }"]
    lines += [f"gate g{i} a, b {{ g{i - 1} a, b; g{i - 1} b, a; }}" for i in range(1, levels + 1)]
    return "\n".join([*lines, f"g{levels} q[0], q[1];"]) + "\n"


@pytest.fixture(scope="module")
def registry():
    return BackendRegistry()


@pytest.fixture(scope="module")
def pool():
    pool = SandboxPool(SandboxBounds(wall_s=60, cpu_s=3, memory_mb=512), size=1)
    yield pool
    pool.close()


def request(registry, circuit: str, backend: str = "aer.noisy", limits: Limits | None = None,
            **fields) -> SandboxRequest:
    limits = limits or Limits()
    spec = JobSpec.from_record({"workflow_id": "sandbox-test", "circuit": circuit, "shots": 100,
                                "backend": backend, **fields})
    return SandboxRequest(spec, limits, BackendView.of(registry.get(backend)))


def test_a_sandbox_prepares_what_the_worker_would(pool, registry) -> None:
    sent = request(registry, ANSATZ3_QASM3, parameter_sets=[[0.1, 0.2, 0.3, 0.4, 0.5]],
                   observables=[{"terms": [{"pauli": "ZZZ", "coeff": 1.0}]}])
    sandboxed = pool.call(sent)
    local = Prepared.of(prepare(sent.spec, registry, TranspileCache(), Limits()))
    assert (sandboxed.backend, sandboxed.shots, sandboxed.num_tasks) == (
        local.backend, local.shots, local.num_tasks)
    a, b = PreparedJob.from_bytes(sandboxed.data), PreparedJob.from_bytes(local.data)
    assert a.tasks == b.tasks
    assert [(t.num_qubits, t.count_ops(), t.depth()) for t in a.templates] == [
        (t.num_qubits, t.count_ops(), t.depth()) for t in b.templates]


def test_device_backends_get_the_workers_noise_aware_layout(pool, registry) -> None:
    from workers.backends.layout import DeviceTranspileCache

    sent = request(registry, BELL_QASM2, backend="ibm.torino")
    assert sent.backend.layout_method == "noise_aware"
    sandboxed = PreparedJob.from_bytes(pool.call(sent).data)
    local = prepare(sent.spec, registry, DeviceTranspileCache(), Limits())

    def used_qubits(job: PreparedJob) -> list[list[int]]:
        return [sorted({t.find_bit(q).index for inst in t.data for q in inst.qubits})
                for t in job.templates]

    assert used_qubits(local)[0] != [0, 1]  # not the trivial layout
    assert used_qubits(sandboxed) == used_qubits(local)


def test_typed_errors_cross_the_process_boundary(pool, registry) -> None:
    with pytest.raises(CircuitTooLarge):
        pool.call(request(registry, doubling(40)))
    with pytest.raises(ForbiddenInclude) as info:
        pool.call(request(registry, 'OPENQASM 2.0;\ninclude "/etc/passwd";\nqreg q[1];\n'))
    assert "root" not in str(info.value)


def test_cpu_time_bound_kills_and_replaces_the_sandbox(pool, registry) -> None:
    replaced = pool.replaced
    with pytest.raises(SandboxTimeout, match="CPU time"):
        pool.call(request(registry, doubling(22), limits=Limits(max_gate_instances=10**15)))
    assert pool.replaced == replaced + 1
    assert pool.call(request(registry, BELL_QASM2)).num_tasks == 1  # the replacement works


def test_a_huge_register_is_stopped_by_the_bounds(pool, registry) -> None:
    huge = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[400000000] q;\n'
    with pytest.raises((ResourceLimitExceeded, SandboxTimeout)):
        pool.call(request(registry, huge, backend="aer.ideal",
                          limits=Limits(max_qubits=10**9)))
    assert pool.call(request(registry, BELL_QASM2)).num_tasks == 1


def test_run_does_not_block_the_event_loop(pool, registry) -> None:
    async def go() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        with pytest.raises(SandboxTimeout):
            await pool.run(request(registry, doubling(22),
                                   limits=Limits(max_gate_instances=10**15)))
        ticker.cancel()
        return ticks

    assert asyncio.run(go()) > 50  # the loop kept turning for the seconds the sandbox ran


def test_a_pool_can_be_waited_on_until_its_process_has_started(registry) -> None:
    """`wait_started` returns once the process has said it is ready: killed after that, it
    fails the next call (SandboxCrashed); killed while starting, it would have been replaced
    before any call reached it."""
    fresh = SandboxPool(SandboxBounds(wall_s=60, cpu_s=3, memory_mb=512), size=1)
    try:
        fresh.wait_started()
        (victim,) = fresh.pids()
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(SandboxCrashed, match="SIGKILL"):
            fresh.call(request(registry, BELL_QASM2))
        assert fresh.pids() != [victim]
        assert fresh.call(request(registry, BELL_QASM2)).num_tasks == 1
    finally:
        fresh.close()


def test_the_address_space_bound_reached_by_the_system_is_the_sandboxs_memory_bound() -> None:
    """RLIMIT_AS shows as MemoryError in Python and as ENOMEM from the system (a thread, an
    mmap): both are the sandbox's bound, not an untyped error told as InvalidJob."""
    import errno

    from workers.circuits.sandbox import _error_frame

    for error in (MemoryError(), OSError(errno.ENOMEM, "Cannot allocate memory")):
        assert _error_frame(error)["error"] == "ResourceLimitExceeded"
    assert _error_frame(OSError(errno.ENOENT, "gone"))["error"] == "FileNotFoundError"


def many_gate_instances(variant: int, instances: int = 1750) -> str:
    """6 qubits, `instances` calls of a 12-operation gate: about 11 MB kept parsed and
    transpiled in a sandbox's caches, which count it by its source text (61 KB)."""
    lines = ['OPENQASM 2.0;', 'include "qelib1.inc";', "qreg q[6];", "creg c[6];",
             "gate blk a,b,c,d,e,f { cx a,b; rx(0.1) b; cx b,c; rx(0.2) c; cx c,d; ry(0.3) d; "
             "cx d,e; rx(0.4) e; cx e,f; ry(0.5) f; cx f,a; rx(0.6) a; }"]
    for i in range(instances):
        order = [(i * 5 + j * (1 + i % 5)) % 6 for j in range(6)]
        if len(set(order)) < 6:
            order = [(i + j) % 6 for j in range(6)]
        lines.append("blk " + ",".join(f"q[{k}]" for k in order) + ";")
    lines += [f"rz({variant}.5) q[0];", "measure q -> c;"]
    return "\n".join(lines) + "\n"


def test_a_sandbox_that_kept_half_its_bound_is_replaced_before_a_program_is_refused(
        registry) -> None:
    """The caches a prepare sandbox keeps between programs grew 60 MiB a 245 KB program
    until its memory bound; the next program, of any tenant, was then dead-lettered as out
    of memory (or crashed the process, an attempt counted against it; a red-team run)."""
    small = SandboxPool(SandboxBounds(wall_s=60, cpu_s=30, memory_mb=120), size=1)
    try:
        pids = set()
        for variant in range(14):
            prepared = small.call(request(registry, many_gate_instances(variant), "aer.ideal"))
            assert prepared.num_tasks == 1
            pids.update(small.pids())
        assert len(pids) >= 2  # replaced at least once, between programs
    finally:
        small.close()


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_for_the_workers_process_group_leaves_its_sandboxes_running(
        registry, stop) -> None:
    """Ctrl-C or a group SIGTERM killed the sandbox under way: the program failed as
    SandboxCrashed and the worker's stop ran into its watchdog (a red-team run)."""
    fresh = SandboxPool(SandboxBounds(wall_s=60, cpu_s=3, memory_mb=512), size=1)
    try:
        fresh.wait_started()
        (sandbox,) = fresh.pids()
        os.kill(sandbox, stop)
        assert fresh.call(request(registry, BELL_QASM2)).num_tasks == 1
        assert fresh.pids() == [sandbox]
    finally:
        fresh.close()
