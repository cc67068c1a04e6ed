"""Simulator calls in a sandbox process (workers/execution/simulator.py): real processes."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.unit.workers.conftest import ANSATZ3_QASM3, BELL_QASM2
from workers.backends.registry import BackendRegistry
from workers.circuits.sandbox import SIMULATE, SandboxBounds, SandboxPool
from workers.circuits.transpile import TranspileCache
from workers.errors import CorruptRecord, SandboxTimeout
from workers.execution.batching import execute_batch
from workers.execution.preparation import prepare
from workers.execution.simulator import (
    native_bell,
    outcomes_of,
    request_for,
    shares,
    simulated_here,
)
from workers.jobs import JobSpec
from workers.limits import Limits

ZZZ = [{"terms": [{"pauli": "ZZZ", "coeff": 1.0}, {"pauli": "XXX", "coeff": 0.5}]}]


@pytest.fixture(scope="module")
def pool():
    pool = SandboxPool(SandboxBounds(wall_s=120, cpu_s=60, memory_mb=1024), size=1,
                       kind=SIMULATE)
    yield pool
    pool.close()


def jobs(registry, backends=("aer.ideal", "aer.noisy", "aer.noisy")) -> list[tuple[object, int]]:
    cache, out = TranspileCache(), []
    for index, backend in enumerate(backends):
        for circuit, fields in ((BELL_QASM2, {}),
                                (ANSATZ3_QASM3, {"parameter_sets": [[0.1, 0.2, 0.3, 0.4, 0.5],
                                                                    [0.5, 0.4, 0.3, 0.2, 0.1]],
                                                 "observables": ZZZ})):
            spec = JobSpec.from_record({"workflow_id": f"sim-{index}-{len(out)}",
                                        "circuit": circuit, "shots": 500, "backend": backend,
                                        **fields})
            out.append((prepare(spec, registry, cache, Limits()), 1000 + len(out)))
    return out


def remote(pool, registry, items, wall_s=None):
    request = request_for(registry, [(p.to_bytes(), seed, p.backend) for p, seed in items])
    header, _ = pool.exchange(request, wall_s)
    return outcomes_of(header, len(items))


def test_counts_equal_the_workers_own_call(pool) -> None:
    registry = BackendRegistry()
    items = jobs(registry)
    assert remote(pool, registry, items) == execute_batch(items, registry)
    assert pool.idle()  # its process is back, waiting


def test_a_pool_is_not_idle_while_a_call_runs_in_it(pool) -> None:
    registry = BackendRegistry()
    items = jobs(registry)
    running = ThreadPoolExecutor(1).submit(remote, pool, registry, items * 20)
    deadline = time.monotonic() + 30
    while pool.idle() and not running.done() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert not running.done() and not pool.idle()
    running.result()
    assert pool.idle()


def test_the_workers_noise_scale_goes_with_the_request(pool) -> None:
    registry = BackendRegistry()
    items = [job for job in jobs(registry) if job[0].backend == "aer.noisy"]
    calibrated = remote(pool, registry, items)
    registry.set_noise_scale("aer.noisy", 3.0)
    scaled = remote(pool, registry, items)
    assert scaled == execute_batch(items, registry)
    assert scaled != calibrated
    registry.set_noise_scale("aer.noisy", 1.0)
    assert remote(pool, registry, items) == calibrated  # the process follows it back


def test_what_does_not_decode_comes_back_as_a_typed_error(pool) -> None:
    registry = BackendRegistry()
    request = request_for(registry, [(b"not a prepared job", 1, "aer.ideal")])
    header, _ = pool.exchange(request)
    with pytest.raises(CorruptRecord, match="prepared job does not decode"):
        outcomes_of(header, 1)


def test_a_call_past_its_wall_bound_kills_the_process_and_the_next_one_runs(pool) -> None:
    registry = BackendRegistry()
    items = jobs(registry)
    replaced = pool.replaced
    with pytest.raises(SandboxTimeout, match="wall-time"):
        remote(pool, registry, items * 20, wall_s=0.05)
    assert pool.replaced == replaced + 1
    assert remote(pool, registry, items[:1]) == execute_batch(items[:1], registry)


def test_backends_with_injected_faults_stay_in_the_worker() -> None:
    registry = BackendRegistry()
    assert simulated_here(registry, ["aer.ideal", "aer.noisy"])
    # qlane's own device simulations go there too (they held the worker's threads); the
    # vendor SDKs' adapters do not
    assert simulated_here(registry, ["ibm.torino", "ibm.sherbrooke"])
    assert not simulated_here(registry, ["ibm_runtime.torino"])
    assert not simulated_here(registry, ["braket.local.sv"])
    registry.set_faults("aer.noisy", "failure_rate=0.5,seed=1")
    assert simulated_here(registry, ["aer.ideal"])
    assert not simulated_here(registry, ["aer.ideal", "aer.noisy"])


def test_shares_cover_every_job_once_in_order_and_balance_the_work() -> None:
    sizes = [900, 100, 100, 100, 500, 400, 100, 100]
    split = shares(sizes, 2)
    assert sorted(i for share in split for i in share) == list(range(len(sizes)))
    assert all(share == sorted(share) for share in split)
    loads = sorted(sum(sizes[i] for i in share) for share in split)
    assert loads == [1100, 1200]  # not [300, 2000] as a split into halves would give
    assert shares(sizes, 1) == [list(range(len(sizes)))]
    assert shares([5, 5], 8) == [[0], [1]]  # never an empty call
    assert shares([], 3) == []


@pytest.mark.parametrize("name", ["aer.ideal", "aer.noisy"])
def test_the_warm_up_bell_pair_is_native_and_entangled(name) -> None:
    backend = BackendRegistry().get(name)
    circuit = native_bell(backend)
    assert {i.operation.name for i in circuit.data} <= {"rz", "sx", "cx", "measure"}
    counts = backend.run([circuit], 4000, 7)[0]  # a constrained backend checks its coupling
    assert counts.get("00", 0) + counts.get("11", 0) > (0.9 if backend.noise_model else 1) * 3999


def test_a_device_simulation_runs_in_the_process_as_in_the_worker(pool) -> None:
    """ibm.* jobs ran only in the worker's threads, where their gate-by-gate Python held the
    event loop (73 s for a job estimated at 0.26 s; a red-team run)."""
    registry = BackendRegistry()
    items = jobs(registry, backends=("ibm.torino", "ibm.sherbrooke"))
    assert remote(pool, registry, items) == execute_batch(items, registry)


def test_a_simulator_process_that_kept_half_its_bound_is_replaced_after_its_call() -> None:
    """A simulator process keeps what it builds (a device: 97 MB for ibm.sherbrooke) and
    caches counted by entries; one that crossed its bound would fail the jobs of the call
    that crossed it, of any tenant. Past half its bound it is replaced after a call, whose
    counts still come back."""
    registry = BackendRegistry()
    items = jobs(registry, backends=("ibm.sherbrooke",))
    small = SandboxPool(SandboxBounds(wall_s=120, cpu_s=60, memory_mb=150), size=1,
                        kind=SIMULATE)
    try:
        first = small.pids()
        assert remote(small, registry, items) == execute_batch(items, registry)
        assert small.replaced == 1
        assert small.pids() != first
    finally:
        small.close()
    roomy = SandboxPool(SandboxBounds(wall_s=120, cpu_s=60, memory_mb=1024), size=1,
                        kind=SIMULATE)
    try:
        remote(roomy, registry, items)
        assert roomy.replaced == 0
    finally:
        roomy.close()
