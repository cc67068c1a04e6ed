"""JobRunner.call_backend with QLANE_SIMULATOR_PROCESS: a real simulator process, a killed one."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from streams.agents.execution import (
    Job,
    JobRunner,
    simulate_batch,
    simulator_process_wanted,
    start_simulator,
    start_simulator_when_settled,
)
from streams.ops.warm_up import WarmUps
from streams.settings import Settings
from streams.workflow.deadletter import SourceRecord
from tests.support import wait_for
from tests.unit.workers.conftest import ANSATZ3_QASM3
from workers.backends.registry import BackendRegistry
from workers.circuits.transpile import TranspileCache
from workers.errors import SandboxCrashed, SandboxTimeout
from workers.execution.breaker import BreakerBoard
from workers.execution.preparation import execute, prepare
from workers.host_workers import start_ticks
from workers.jobs import JobSpec
from workers.limits import Limits


def fake_runtime(**fields) -> SimpleNamespace:
    """A stand-in for streams.runtime.Runtime with the fields the calls keep state in."""
    return SimpleNamespace(**{"abandoned_executors": [], "overrunning_calls": {},
                              "warm_ups": WarmUps(), **fields})


BELL_QASM3 = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\nbit[2] c;\nh q[0];\n'
              "cx q[0], q[1];\nc = measure q;\n")


def thread_calls() -> SimpleNamespace:
    """A runtime whose calls run in its two threads, timed out after 0.5 s."""
    return fake_runtime(
        settings=Settings(simulator_process=False, execute_timeout_s=0.5),
        registry=BackendRegistry(), breakers=BreakerBoard(failure_threshold=2),
        executor=ThreadPoolExecutor(2), simulator=None, host_workers=None)


@pytest.fixture(scope="module")
def runtime():
    runtime = fake_runtime(
        settings=Settings(simulator_process=True, execute_timeout_s=120),
        registry=BackendRegistry(), breakers=BreakerBoard(failure_threshold=2),
        executor=ThreadPoolExecutor(2), simulator=None, host_workers=None,
    )
    start_simulator(runtime)
    yield runtime
    runtime.simulator.close()
    runtime.executor.shutdown()


def job(registry, seed: int = 7, sets: int = 8, shots: int = 2000) -> Job:
    request = {"workflow_id": "sim-call", "circuit": ANSATZ3_QASM3, "shots": shots,
               "backend": "aer.noisy", "seed": seed,
               "parameter_sets": [[0.1 * i, 0.2, 0.3, 0.4, 0.5] for i in range(sets)],
               "observables": [{"terms": [{"pauli": "ZZZ", "coeff": 1.0}]}]}
    prepared = prepare(JobSpec.from_record(request), registry, TranspileCache(), Limits())
    source = SourceRecord("jobs", 0, 1, None, b"sim-call", b"", ())
    task = {"workflow_id": "sim-call", "accepted_at_ms": int(time.time() * 1000)}
    return Job.of(source, task, request, prepared, prepared.to_bytes())


def test_a_call_runs_in_the_simulator_process_with_the_workers_counts(runtime) -> None:
    one = job(runtime.registry)
    counts, seconds = asyncio.run(JobRunner(runtime, {}).call_backend(one, one.prepared))
    assert counts == execute(one.prepared, runtime.registry, one.seed)
    assert seconds > 0
    assert runtime.simulator.pids()  # and the process that ran it is still there


def test_a_killed_simulator_is_a_crash_that_does_not_count_on_the_breaker(runtime) -> None:
    """The process dies (here SIGKILLed between calls, as the kernel's OOM killer would): the
    call gets SandboxCrashed (retryable: the runner's retries and the attempt ledger take it
    from there), the breaker does not count it, and the next call runs in a new process."""
    one = job(runtime.registry)
    breaker = runtime.breakers.for_backend("aer.noisy")
    before = breaker.consecutive_failures
    # A process killed while it starts is replaced before any call reaches it (CI once
    # found the module's process not started yet): the victim here has started.
    runtime.simulator.wait_started()
    (victim,) = runtime.simulator.pids()
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(SandboxCrashed, match="SIGKILL"):
        asyncio.run(JobRunner(runtime, {}).call_backend(one, one.prepared))
    assert breaker.consecutive_failures == before
    assert runtime.simulator.pids() != [victim]  # replaced
    counts, _ = asyncio.run(JobRunner(runtime, {}).call_backend(one, one.prepared))
    assert counts == execute(one.prepared, runtime.registry, one.seed)


def test_a_batch_split_over_two_simulator_processes_has_each_jobs_own_counts() -> None:
    """QLANE_SIMULATOR_PROCESSES=2: the batch goes out as two calls at once, one per process,
    and every job gets the counts of a call on its own; one process killed fails the batch
    (SandboxCrashed, as with one process) after the other call has ended."""
    two = fake_runtime(
        settings=Settings(simulator_process=True, simulator_processes=2, execute_timeout_s=120),
        registry=BackendRegistry(), breakers=BreakerBoard(failure_threshold=2),
        executor=ThreadPoolExecutor(2), simulator=None, host_workers=None,
    )
    start_simulator(two)
    try:
        assert len(two.simulator.pids()) == 2
        batch = [job(two.registry, seed) for seed in (7, 8, 9, 10, 11)]
        outcomes = asyncio.run(simulate_batch(two, batch)).outcomes
        assert outcomes == [execute(one.prepared, two.registry, one.seed) for one in batch]
        victim = two.simulator.pids()[0]
        os.kill(victim, signal.SIGKILL)
        with pytest.raises(SandboxCrashed):
            asyncio.run(simulate_batch(two, batch))
        assert len(two.simulator.pids()) == 2 and victim not in two.simulator.pids()
        assert asyncio.run(simulate_batch(two, batch)).outcomes == outcomes
    finally:
        two.simulator.close()
        two.executor.shutdown()


class SplitPool:
    """Two simulator processes, faked: the first call crashes, the second times out."""

    size = 2

    def __init__(self) -> None:
        self.calls = 0

    async def run_exchange(self, request, wall_s):
        self.calls += 1
        call = self.calls
        await asyncio.sleep(0.01 * call)  # the timeout is the later of the two
        if call == 1:
            raise SandboxCrashed("the sandbox was killed by SIGKILL")
        raise SandboxTimeout("the sandbox took longer than 1s")


def test_a_split_batch_with_a_crash_and_a_timeout_fails_as_the_timeout() -> None:
    """The batch fails as the timeout whichever of the two calls ended first; neither is
    counted on the breaker (the worker's own simulator is slow or killed because of a job,
    which then runs alone and fails as SimulationTimeout)."""
    fake = fake_runtime(settings=Settings(simulator_process=True), registry=BackendRegistry(),
                           host_workers=None,
                           breakers=BreakerBoard(failure_threshold=5), simulator=SplitPool())
    batch = [job(fake.registry, seed) for seed in (1, 2)]
    with pytest.raises(SandboxTimeout):
        asyncio.run(simulate_batch(fake, batch))
    assert fake.simulator.calls == 2
    assert fake.breakers.for_backend("aer.noisy").consecutive_failures == 0


def test_a_call_that_waits_for_the_simulator_process_is_billed_its_run_only(runtime) -> None:
    """A light job sent while a heavy one runs in the only simulator process waits for it.
    It is billed the seconds the process spent on it, not its wait: a small part of the time
    it took to come back (billed its wait, it would be billed all of that)."""
    runner = JobRunner(runtime, {})
    # 1000 value sets of one template: Aer binds them itself, so the call stays long enough
    heavy = job(runtime.registry, 7, sets=1000, shots=20000)
    light = job(runtime.registry, 8, 1, 100)
    runtime.simulator.wait_started()  # not a process being replaced after the kill test

    async def light_behind_heavy():
        heavy_call = asyncio.ensure_future(runner.call_backend(heavy, heavy.prepared))
        await asyncio.sleep(0.05)  # the heavy job is in the process by now
        started = time.perf_counter()
        _, light_s = await runner.call_backend(light, light.prepared)
        light_wall_s = time.perf_counter() - started
        _, heavy_s = await heavy_call
        return heavy_s, light_s, light_wall_s

    heavy_s, light_s, light_wall_s = asyncio.run(light_behind_heavy())
    assert light_wall_s > heavy_s / 2  # it did wait for the heavy job
    assert light_s < light_wall_s / 4


def test_a_call_that_waits_for_an_executor_thread_is_billed_its_run_only() -> None:
    """In the worker's threads (no simulator process): the executor's only thread is busy for
    1 s when the call is made; the job is billed the simulation, not the second it waited."""
    busy = fake_runtime(
        settings=Settings(simulator_process=False, execute_timeout_s=120),
        registry=BackendRegistry(), breakers=BreakerBoard(failure_threshold=2),
        executor=ThreadPoolExecutor(1), simulator=None, host_workers=None,
    )
    one = job(busy.registry)
    execute(one.prepared, busy.registry, one.seed)  # warm: the timed call is the simulation

    async def behind_a_busy_thread():
        loop = asyncio.get_running_loop()
        blocker = loop.run_in_executor(busy.executor, time.sleep, 1.0)
        started = time.perf_counter()
        counts, seconds = await JobRunner(busy, {}).call_backend(one, one.prepared)
        await blocker
        return counts, seconds, time.perf_counter() - started

    try:
        counts, seconds, wall_s = asyncio.run(behind_a_busy_thread())
    finally:
        busy.executor.shutdown()
    assert counts == execute(one.prepared, busy.registry, one.seed)
    assert wall_s >= 1.0 and 0 < seconds < wall_s - 0.9


def test_auto_sends_aer_to_the_process_only_while_the_worker_has_two_cores_to_itself(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("streams.settings.usable_cores", lambda: 2.0)
    monkeypatch.setattr("streams.agents.execution.usable_cores", lambda: 2.0)
    settings = Settings(simulator_process="auto", host_workers_dir=str(tmp_path))
    assert settings.simulator_process and settings.simulator_process_auto
    runtime = fake_runtime(settings=settings, host_workers=None, simulator_wanted=None,
                              simulator_unwanted_since=None, simulator=None,
                              registry=BackendRegistry())
    assert simulator_process_wanted(runtime)
    assert (tmp_path / str(os.getpid())).exists()  # registered on the host
    assert runtime.registry.parallel_threads == 2
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / str(sibling.pid)).write_text(json.dumps(
            {"start": start_ticks(sibling.pid), "cpus": sorted(runtime.host_workers.cpus)}))
        runtime.host_workers._counted_at = None  # past the refresh interval
        assert not simulator_process_wanted(runtime)  # one core each: in the threads
        assert runtime.registry.parallel_threads == 1  # and one Aer thread per call
    finally:
        sibling.kill()
        sibling.wait()
    runtime.host_workers._counted_at = None
    assert simulator_process_wanted(runtime)
    assert runtime.registry.parallel_threads == 2
    runtime.host_workers.leave()


@pytest.mark.parametrize("cores, process, threads", [(2.0, False, 2), (1.5, False, 1),
                                                     (4.0, True, 4), (0.5, False, 1)])
def test_aer_threads_in_the_worker_are_its_whole_usable_cores(
        tmp_path, monkeypatch, cores, process, threads) -> None:
    monkeypatch.setattr("streams.agents.execution.usable_cores", lambda: cores)
    runtime = fake_runtime(
        settings=Settings(simulator_process=process, host_workers_dir=str(tmp_path)),
        host_workers=None, simulator_wanted=None, registry=BackendRegistry())
    simulator_process_wanted(runtime)
    assert runtime.registry.parallel_threads == threads
    runtime.settings = Settings(simulator_process=process, simulator_threads=3)
    simulator_process_wanted(runtime)
    assert runtime.registry.parallel_threads == 3  # as set


def test_an_explicit_simulator_process_setting_ignores_the_other_workers(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("streams.agents.execution.usable_cores", lambda: 2.0)
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for value in (True, False):
            runtime = fake_runtime(
                settings=Settings(simulator_process=value, host_workers_dir=str(tmp_path)),
                host_workers=None, simulator_wanted=None, registry=BackendRegistry())
            assert simulator_process_wanted(runtime) is value
            (tmp_path / str(sibling.pid)).write_text(json.dumps(
                {"start": start_ticks(sibling.pid), "cpus": sorted(runtime.host_workers.cpus)}))
            runtime.host_workers._counted_at = None
            assert simulator_process_wanted(runtime) is value
            assert runtime.registry.parallel_threads == 2  # its whole cores, as before
            runtime.host_workers.leave()
    finally:
        sibling.kill()
        sibling.wait()


@pytest.mark.parametrize("explicit", [True, False])
def test_an_auto_worker_counts_a_worker_set_explicitly_beside_it(
        tmp_path, monkeypatch, explicit) -> None:
    """A worker with QLANE_SIMULATOR_PROCESS=true or false registers on the host too: an
    `auto` worker beside it shares the cores with it (before, it counted itself alone and
    started a simulator process on two cores shared by two workers)."""
    monkeypatch.setattr("streams.settings.usable_cores", lambda: 2.0)
    monkeypatch.setattr("streams.agents.execution.usable_cores", lambda: 2.0)
    fixed = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from types import SimpleNamespace; "
         "from streams.agents.execution import simulator_process_wanted; "
         "from streams.settings import Settings; "
         "from workers.backends.registry import BackendRegistry; "
         f"r = SimpleNamespace(settings=Settings(simulator_process={explicit}, "
         f"host_workers_dir={str(tmp_path)!r}), host_workers=None, simulator_wanted=None, "
         "registry=BackendRegistry()); simulator_process_wanted(r); print('joined', flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[4])
    try:
        assert fixed.stdout.readline().strip() == "joined"
        runtime = fake_runtime(
            settings=Settings(simulator_process="auto", host_workers_dir=str(tmp_path)),
            host_workers=None, simulator_wanted=None, simulator_unwanted_since=None,
            simulator=None, registry=BackendRegistry())
        assert not simulator_process_wanted(runtime)  # one core each: in the threads
        assert runtime.host_workers.sharing() == 2
        runtime.host_workers.leave()
    finally:
        fixed.kill()
        fixed.wait()


def test_a_starting_worker_decides_once_the_workers_started_with_it_have_registered(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("streams.settings.usable_cores", lambda: 2.0)
    monkeypatch.setattr("streams.agents.execution.usable_cores", lambda: 2.0)
    monkeypatch.setattr("streams.agents.execution.HOST_SETTLE_S", 0.3)
    runtime = fake_runtime(
        settings=Settings(simulator_process="auto", host_workers_dir=str(tmp_path)),
        host_workers=None, simulator_wanted=None, simulator_unwanted_since=None, simulator=None,
        registry=BackendRegistry())
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    async def start() -> None:
        starting = asyncio.ensure_future(start_simulator_when_settled(runtime))
        await asyncio.sleep(0.05)
        assert (tmp_path / str(os.getpid())).exists()  # registered at once
        assert runtime.host_workers.sharing() == 1  # alone so far (and that count is kept)
        (tmp_path / str(sibling.pid)).write_text(json.dumps(
            {"start": start_ticks(sibling.pid), "cpus": sorted(runtime.host_workers.cpus)}))
        await starting

    try:
        asyncio.run(start())
        assert runtime.simulator is None  # no process started that would sit idle
        assert runtime.simulator_wanted is False
    finally:
        sibling.kill()
        sibling.wait()
        if runtime.simulator is not None:
            runtime.simulator.close()
        runtime.host_workers.leave()


class FakePool:
    """A simulator pool that is busy as the test says."""

    def __init__(self, *args, **kwargs) -> None:
        self.busy, self.closed = False, False
        self.last_used = 0.0

    def idle(self) -> bool:
        return not self.busy

    def close(self) -> None:
        self.closed = True


def test_auto_closes_a_simulator_process_it_stopped_using_once_idle_long_enough(
        tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("streams.settings.usable_cores", lambda: 2.0)
    monkeypatch.setattr("streams.agents.execution.usable_cores", lambda: 2.0)
    pool = FakePool()
    runtime = fake_runtime(
        settings=Settings(simulator_process="auto", host_workers_dir=str(tmp_path),
                          simulator_idle_close_s=0.3),
        host_workers=None, simulator_wanted=None, simulator_unwanted_since=None,
        simulator=pool, registry=BackendRegistry())
    assert simulator_process_wanted(runtime)  # alone: its process (started while alone)
    sibling = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / str(sibling.pid)).write_text(json.dumps(
            {"start": start_ticks(sibling.pid), "cpus": sorted(runtime.host_workers.cpus)}))
        runtime.host_workers._counted_at = None
        assert not simulator_process_wanted(runtime)
        assert runtime.simulator is pool and not pool.closed  # kept for a while
        time.sleep(0.35)
        pool.busy = True  # a call decided before the switch still runs in it
        assert not simulator_process_wanted(runtime)
        assert runtime.simulator is pool and not pool.closed
        pool.busy = False
        assert not simulator_process_wanted(runtime)
        assert runtime.simulator is None and pool.closed
    finally:
        sibling.kill()
        sibling.wait()
    runtime.host_workers._counted_at = None
    assert simulator_process_wanted(runtime)  # alone again: in_simulator_process starts one
    assert runtime.simulator_unwanted_since is None
    runtime.host_workers.leave()


def test_a_call_takes_the_estimates_made_where_its_jobs_were_prepared(monkeypatch) -> None:
    """The worker walked every job's templates again on its event loop to estimate a call
    (3-5 s per large job: a batch of 29 held the loop 54 s; a red-team run)."""
    from streams.agents import execution

    threads = fake_runtime(
        settings=Settings(simulator_process=False, execute_timeout_s=120),
        registry=BackendRegistry(), breakers=BreakerBoard(failure_threshold=2),
        executor=ThreadPoolExecutor(1), simulator=None, host_workers=None,
    )
    one = job(threads.registry)
    assert one.prepared.simulation_seconds > 0

    def estimated_again(*_args, **_kwargs):
        raise AssertionError("estimated again on the event loop")

    monkeypatch.setattr(execution, "simulation_estimate", estimated_again)
    try:
        threads.settings.thread_simulation_max_s = one.prepared.simulation_seconds * 2
        assert not execution.in_simulator_process(threads, ["aer.noisy"], [one.prepared])
    finally:
        threads.executor.shutdown()


def test_a_long_call_leaves_the_workers_threads_for_a_simulator_process() -> None:
    """Where Aer runs in the worker's threads, a call estimated above
    thread_simulation_max_s runs in a simulator process (killed at the timeout) and is
    answered with the same counts; a short one stays in the threads."""
    from streams.agents.execution import in_simulator_process
    from workers.execution.preparation import simulation_estimate

    threads = fake_runtime(
        settings=Settings(simulator_process=False, execute_timeout_s=120),
        registry=BackendRegistry(), breakers=BreakerBoard(failure_threshold=2),
        executor=ThreadPoolExecutor(1), simulator=None, host_workers=None,
    )
    one = job(threads.registry)
    estimate = simulation_estimate(one.prepared, threads.registry.get("aer.noisy"))
    try:
        threads.settings.thread_simulation_max_s = estimate * 2
        assert not in_simulator_process(threads, ["aer.noisy"], [one.prepared])
        assert threads.simulator is None
        threads.settings.thread_simulation_max_s = estimate / 2
        assert in_simulator_process(threads, ["aer.noisy"], [one.prepared])
        counts, _ = asyncio.run(JobRunner(threads, {}).call_backend(one, one.prepared))
        assert counts == execute(one.prepared, threads.registry, one.seed)
    finally:
        threads.executor.shutdown()
        if threads.simulator is not None:
            threads.simulator.close()


def test_a_light_device_call_stays_where_its_device_was_built_a_long_one_leaves(
        runtime) -> None:
    """The simulator process builds a device simulation at its first call (5.5 s for
    ibm.torino): a first Bell job with a 5 s deadline missed it (a red-team run). The Aer
    backends, warmed up there, still go there."""
    from streams.agents.execution import in_simulator_process
    from workers.execution.preparation import simulation_estimate

    request = {"workflow_id": "device-call", "circuit": ANSATZ3_QASM3, "shots": 100,
               "backend": "ibm.torino", "seed": 3,
               "parameter_sets": [[0.1, 0.2, 0.3, 0.4, 0.5]],
               "observables": [{"terms": [{"pauli": "ZZZ", "coeff": 1.0}]}]}
    prepared = prepare(JobSpec.from_record(request), runtime.registry, TranspileCache(),
                       Limits())
    estimate = simulation_estimate(prepared, runtime.registry.get("ibm.torino"))
    limit = runtime.settings.thread_simulation_max_s
    try:
        runtime.settings.thread_simulation_max_s = estimate * 2
        assert not in_simulator_process(runtime, ["ibm.torino"], [prepared])
        assert in_simulator_process(runtime, ["aer.noisy"], [job(runtime.registry).prepared])
        runtime.settings.thread_simulation_max_s = estimate / 2
        assert in_simulator_process(runtime, ["ibm.torino"], [prepared])
    finally:
        runtime.settings.thread_simulation_max_s = limit


def test_a_long_variational_evaluation_runs_where_a_stage_call_would() -> None:
    """simulate_alone (the variational stage's evaluations, which always ran in threads): a
    call estimated above thread_simulation_max_s goes to a simulator process, with the
    thread's counts; a short one stays in the threads."""
    from streams.agents.execution import simulate_alone
    from workers.execution.preparation import simulation_estimate

    threads = fake_runtime(
        settings=Settings(simulator_process=False, execute_timeout_s=120),
        registry=BackendRegistry(), breakers=BreakerBoard(failure_threshold=2),
        executor=ThreadPoolExecutor(1), simulator=None, host_workers=None,
    )
    one = job(threads.registry, seed=11)
    estimate = simulation_estimate(one.prepared, threads.registry.get("aer.noisy"))
    try:
        threads.settings.thread_simulation_max_s = estimate * 2
        in_thread, _ = asyncio.run(simulate_alone(threads, one.prepared, 11))
        assert threads.simulator is None
        threads.settings.thread_simulation_max_s = estimate / 2
        in_process, _ = asyncio.run(simulate_alone(threads, one.prepared, 11))
        assert threads.simulator is not None
        assert in_process == in_thread == execute(one.prepared, threads.registry, 11)
    finally:
        threads.executor.shutdown()
        if threads.simulator is not None:
            threads.simulator.close()


def test_auto_keeps_a_process_that_long_calls_use_and_closes_it_once_they_stop(
        tmp_path, monkeypatch) -> None:
    """With two workers on a host, `auto` runs Aer in their threads and long calls in a
    process: its idle time counted from the switch, so after the first minute every long call
    closed the process and started another (20 starts in 150 s, red-team run)."""
    from streams.agents.execution import in_simulator_process
    from workers.execution.preparation import simulation_estimate

    monkeypatch.setattr("streams.agents.execution.simulator_process_wanted",
                        lambda runtime, close_idle=True: False)
    started = []
    monkeypatch.setattr("streams.agents.execution.start_simulator",
                        lambda runtime, needed=False: started.append(needed))
    pool = FakePool()
    runtime = fake_runtime(
        settings=Settings(simulator_process="auto", host_workers_dir=str(tmp_path),
                          simulator_idle_close_s=0.3),
        simulator=pool, simulator_unwanted_since=time.monotonic() - 100,
        registry=BackendRegistry())
    long_job = job(runtime.registry)
    runtime.settings.thread_simulation_max_s = simulation_estimate(
        long_job.prepared, runtime.registry.get("aer.noisy")) / 2
    for _ in range(3):  # long calls a few seconds apart: the process stays
        assert in_simulator_process(runtime, ["aer.noisy"], [long_job.prepared])
        assert runtime.simulator is pool and not pool.closed
        time.sleep(0.1)
    runtime.settings.thread_simulation_max_s = 1e9  # then only short calls
    assert not in_simulator_process(runtime, ["aer.noisy"], [long_job.prepared])
    assert not pool.closed  # used 0.1 s ago
    time.sleep(0.35)
    assert not in_simulator_process(runtime, ["aer.noisy"], [long_job.prepared])
    assert pool.closed and runtime.simulator is None
    assert started == [True, True, True]


def test_a_long_call_in_the_simulator_process_counts_as_use_until_it_ends(
        tmp_path, monkeypatch) -> None:
    """Idle time counted from a call's start: as each call of 74 s ended, the process was
    closed as "unused for 74 s" and the next long call waited for a new one (a red-team
    run)."""
    from streams.agents.execution import close_idle_simulator

    pool = FakePool()
    runtime = fake_runtime(
        settings=Settings(simulator_process="auto", host_workers_dir=str(tmp_path),
                          simulator_idle_close_s=60),
        simulator=pool, simulator_unwanted_since=time.monotonic() - 74,
        registry=BackendRegistry())
    pool.last_used = time.monotonic()  # the call that began 74 s ago ended just now
    close_idle_simulator(runtime)
    assert not pool.closed and runtime.simulator is pool
    pool.last_used = time.monotonic() - 61
    close_idle_simulator(runtime)
    assert pool.closed and runtime.simulator is None


def two_jobs_whose_batch_raises(monkeypatch, error: BaseException) -> list:
    """Two stand-in jobs of one tenant, and a simulator process whose every call raises."""
    from streams.agents import execution

    async def simulate_batch(runtime, jobs):
        raise error

    monkeypatch.setattr(execution, "in_simulator_process", lambda *args: True)
    monkeypatch.setattr(execution, "simulate_batch", simulate_batch)
    return [SimpleNamespace(source=SourceRecord("t", 0, offset, None, b"k", b"v", ()),
                            prepared=SimpleNamespace(tasks=[1], backend="aer.ideal"),
                            request={"tenant": "acme"})
            for offset in (1, 2)]


def test_a_lone_job_refused_for_what_it_is_is_not_run_again_alone(monkeypatch) -> None:
    """A 20-qubit Estimator job's reply passed the sandbox's output bound: the batch of one
    failed as a whole and the job ran again alone, 107 s twice, to the same refusal (a
    red-team run). A lone job's own refusal is its slot's; a batch of several still splits."""
    from streams.agents import execution
    from workers.errors import ResourceLimitExceeded

    refusal = ResourceLimitExceeded("the sandbox's reply exceeds 16777216 bytes")

    jobs = two_jobs_whose_batch_raises(monkeypatch, refusal)
    runtime = fake_runtime()
    assert asyncio.run(execution.batch_outcomes(runtime, jobs[:1])) == {
        jobs[0].source.address: (refusal, 0.0)}
    assert asyncio.run(execution.batch_outcomes(runtime, jobs)) == {}


def tenant_job(registry, tenant: str, circuit: str, shots: int, offset: int,
               parameter_sets=None) -> Job:
    request = {"workflow_id": f"{tenant}.j{offset}", "circuit": circuit, "shots": shots,
               "backend": "aer.ideal", "seed": 3, "tenant": tenant}
    if parameter_sets:
        request["parameter_sets"] = parameter_sets
    prepared = prepare(JobSpec.from_record(request), registry, TranspileCache(), Limits())
    source = SourceRecord("jobs", 0, offset, None, request["workflow_id"].encode(), b"", ())
    task = {"workflow_id": request["workflow_id"], "accepted_at_ms": int(time.time() * 1000)}
    return Job.of(source, task, request, prepared, prepared.to_bytes())


def test_a_tenant_is_not_billed_for_another_tenants_job_estimated_too_low() -> None:
    """One tenant's 1,000 parameter sets of a long 2-qubit chain were estimated at 0.12 s and
    ran 40 s; another tenant's 12-qubit job in the same call was billed 10.97 s for the
    0.29 s it took alone (a red-team run). Tenants' jobs now never share a call."""
    from streams.agents.execution import batch_outcomes

    runtime = fake_runtime(
        settings=Settings(simulator_process=False, execute_timeout_s=120),
        registry=BackendRegistry(), breakers=BreakerBoard(failure_threshold=2),
        executor=ThreadPoolExecutor(1), simulator=None, host_workers=None,
    )
    chain = ('OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] a;\nqubit[2] q;\n'
             "bit[2] c;\nrx(a) q[0];\n" + "rz(a) q[0];\nsx q[0];\n" * 2000 + "c = measure q;\n")
    ghz = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[12] q;\nbit[12] c;\nh q[0];\n'
           + "".join(f"cx q[{i}], q[{i + 1}];\n" for i in range(11)) + "c = measure q;\n")
    hostile = tenant_job(runtime.registry, "evil", chain, 1, 1, [[0.1 * i] for i in range(200)])
    victim = tenant_job(runtime.registry, "t01", ghz, 4000, 2)
    try:
        billed = asyncio.run(batch_outcomes(runtime, [hostile, victim]))
    finally:
        runtime.executor.shutdown()
    hostile_s, victim_s = billed[hostile.source.address][1], billed[victim.source.address][1]
    assert isinstance(billed[victim.source.address][0], list)
    assert victim_s < hostile_s / 20, (victim_s, hostile_s)


def test_a_lone_job_past_the_timeout_is_its_own_simulation_timeout(monkeypatch) -> None:
    """A batch of one past the timeout ran again alone, as long again: its dead letter came
    14-24 s after the first timeout (a red-team run). A batch of several still splits."""
    from streams.agents import execution
    from workers.errors import SimulationTimeout

    jobs = two_jobs_whose_batch_raises(
        monkeypatch, SandboxTimeout("the simulator process took longer than 5s"))
    runtime = fake_runtime(settings=Settings(execute_timeout_s=5))
    ((slot, seconds),) = asyncio.run(execution.batch_outcomes(runtime, jobs[:1])).values()
    assert isinstance(slot, SimulationTimeout) and seconds == 0.0
    assert "longer than 5s" in str(slot)
    assert asyncio.run(execution.batch_outcomes(runtime, jobs)) == {}


def test_a_batch_call_in_the_workers_threads_is_bounded_by_the_execute_timeout(
        monkeypatch) -> None:
    """A hung backend held the stage 690 s and counting: the batch call in the worker's
    threads had no timeout, so no job failed, retried or was dead-lettered (a red-team run
    with Prometheus: nothing paged). A batch of several past it splits."""
    import threading

    from streams.agents import execution, threads
    from workers.errors import BackendUnavailable

    release = threading.Event()

    def hung_batch(*args, **kwargs):
        release.wait(30)
        return [], []

    monkeypatch.setattr(execution, "timed_batch", hung_batch)
    monkeypatch.setattr(execution, "in_simulator_process", lambda *args: False)
    runtime = thread_calls()
    registry, bell = runtime.registry, BELL_QASM3
    jobs = [tenant_job(registry, "acme", bell, 10, offset) for offset in (1, 2)]
    first = runtime.executor
    try:
        started = time.monotonic()
        assert asyncio.run(execution.batch_outcomes(runtime, jobs)) == {}
        # Its backend still overruns: refused at once (a lone job past its own timeout is
        # SimulationTimeout: test_a_backend_whose_call_overruns_takes_no_more_of_...).
        ((slot, seconds),) = asyncio.run(execution.batch_outcomes(runtime, jobs[:1])).values()
        assert isinstance(slot, BackendUnavailable) and seconds == 0.0
        # The threads still in the hung calls are left behind: the worker's other thread work
        # (another backend's calls, preparation, mitigation) does not wait for them. Two hung
        # calls filled the executor, and a healthy backend's 0.85 s job took 113.7 s.
        assert runtime.executor is not first
        assert asyncio.run(threads.in_thread(runtime, lambda: 42)) == 42
        assert time.monotonic() - started < 10
    finally:
        release.set()
        first.shutdown()
        runtime.executor.shutdown()


def past_timeout(backend: str) -> float:
    from streams.ops import metrics

    return metrics.REGISTRY.get_sample_value("qlane_calls_past_timeout",
                                             {"backend": backend}) or 0.0


def test_a_backend_whose_call_overruns_takes_no_more_of_the_workers_threads(
        monkeypatch) -> None:
    """Two hung calls each left their executor behind; from the third on, the hung calls
    filled the worker's threads again and no job on any backend finished for 129 s (a
    red-team run with a hung backend). Until its overrunning call ends, a backend's calls go
    to the simulator process (a simulator of the worker's own) or are refused at once."""
    import threading

    from streams.agents import execution, threads
    from workers.errors import BackendUnavailable, SimulationTimeout

    release = threading.Event()
    called = []

    def hung_batch(items, *args, **kwargs):
        called.append(len(items))
        release.wait(30)
        return [], []

    routed = execution.in_simulator_process
    started = []
    monkeypatch.setattr(execution, "timed_batch", hung_batch)
    monkeypatch.setattr(execution, "in_simulator_process", lambda *args: False)
    monkeypatch.setattr(execution, "start_simulator", lambda runtime, needed=False:
                        started.append(needed))
    runtime = thread_calls()
    registry, bell = runtime.registry, BELL_QASM3
    executors = [runtime.executor]
    try:
        slots = []
        for offset in range(5):
            job = tenant_job(registry, "acme", bell, 10, offset)
            ((slot, _),) = asyncio.run(execution.batch_outcomes(runtime, [job])).values()
            slots.append(slot)
            executors.append(runtime.executor)
        assert isinstance(slots[0], SimulationTimeout)
        assert all(isinstance(slot, BackendUnavailable) for slot in slots[1:]), slots
        assert called == [1]  # one thread in the hang, not one more per job
        assert past_timeout("aer.ideal") == 1
        clock = time.monotonic()
        assert asyncio.run(threads.in_thread(runtime, lambda: 42)) == 42
        assert time.monotonic() - clock < 2
        # A simulator of the worker's own goes to its process meanwhile, killed at a timeout.
        assert routed(runtime, ["aer.ideal"]) and started == [True]
        release.set()
        assert wait_for(lambda: not threads.overrunning(runtime, ["aer.ideal"]), timeout_s=10)
        assert runtime.overrunning_calls == {}
        assert past_timeout("aer.ideal") == 0
    finally:
        release.set()
        for executor in set(executors):
            executor.shutdown()


def test_a_batch_on_several_backends_past_its_timeout_marks_none_of_them(monkeypatch) -> None:
    """A tenant's batch with a hung backend's job and a healthy backend's marked both: the
    healthy backend's job was refused as BackendUnavailable three times and its breaker
    opened (a red-team run). Which backend hung is not known from a batch; a marked one's
    jobs alone are refused."""
    import threading

    from streams.agents import execution
    from workers.errors import BackendUnavailable

    release = threading.Event()
    calls = []

    def batch(items, *args, **kwargs):
        calls.append(sorted(prepared.backend for prepared, _ in items))
        if len(calls) == 1:
            release.wait(30)
        return [[{"00": 1}]] * len(items), [0.0] * len(items)

    monkeypatch.setattr(execution, "timed_batch", batch)
    monkeypatch.setattr(execution, "in_simulator_process", lambda *args: False)
    monkeypatch.setattr(execution, "simulated_here", lambda registry, names: False)
    runtime = thread_calls()
    registry, bell = runtime.registry, BELL_QASM3
    ideal = tenant_job(registry, "acme", bell, 10, 1)
    noisy = tenant_job(registry, "acme", bell, 10, 2)
    noisy.prepared = dataclasses.replace(noisy.prepared, backend="aer.noisy")
    executors = [runtime.executor]
    try:
        assert asyncio.run(execution.batch_outcomes(runtime, [ideal, noisy])) == {}
        executors.append(runtime.executor)
        assert runtime.overrunning_calls == {} and past_timeout("several") == 1
        # aer.noisy's own call hung meanwhile: its job alone is refused, the other one runs.
        runtime.overrunning_calls["aer.noisy"] = [threading.Event()]
        slots = asyncio.run(execution.batch_outcomes(runtime, [ideal, noisy]))
        assert isinstance(slots[noisy.source.address][0], BackendUnavailable)
        assert slots[ideal.source.address][0] == [{"00": 1}]
        assert calls[-1] == ["aer.ideal"]
    finally:
        release.set()
        for executor in executors:
            executor.shutdown()
    assert past_timeout("several") == 0


def test_an_overrunning_simulators_jobs_leave_a_batch_with_a_backend_it_does_not_simulate(
        monkeypatch) -> None:
    """A tenant's batch mixing a simulator of the worker's own, still in a call past its
    timeout, with a backend the simulator process cannot run went to the worker's threads,
    and the healthy backend's job was refused with the overrunning one's. The healthy job
    runs; the other is left out of the batch, to go to the simulator process alone."""
    import threading

    from streams.agents import execution

    calls = []

    def batch(items, *args, **kwargs):
        calls.append(sorted(prepared.backend for prepared, _ in items))
        return [[{"00": 1}]] * len(items), [0.0] * len(items)

    monkeypatch.setattr(execution, "timed_batch", batch)
    monkeypatch.setattr(execution, "simulated_here",
                        lambda registry, names: all(name == "aer.ideal" for name in names))
    runtime = thread_calls()
    registry, bell = runtime.registry, BELL_QASM3
    ideal = tenant_job(registry, "acme", bell, 10, 1)
    device = tenant_job(registry, "acme", bell, 10, 2)
    device.prepared = dataclasses.replace(device.prepared, backend="ibm_runtime.sherbrooke")
    runtime.overrunning_calls["aer.ideal"] = [threading.Event()]
    try:
        slots = asyncio.run(execution.batch_outcomes(runtime, [ideal, device]))
        assert slots == {device.source.address: ([{"00": 1}], 0.0)}
        assert calls == [["ibm_runtime.sherbrooke"]]
    finally:
        runtime.executor.shutdown()


def test_a_prepared_job_is_loaded_and_estimated_off_the_event_loop(monkeypatch) -> None:
    """On the loop, 29 ZNE jobs of 15 MB each held it 54 s (1-1.7 s to decode each, 3-5 s to
    estimate each), then went to the simulator process to be refused (a red-team run): the
    sandbox prepares with a view of the backend that cannot estimate."""
    import threading

    from streams.agents import common
    from workers.errors import JobTooLarge
    from workers.execution import preparation

    registry = BackendRegistry()
    one = job(registry)
    data = one.prepared.to_bytes()
    estimate = one.prepared.simulation_seconds
    threads = []
    real = preparation.simulation_estimate

    def counted(*args, **kwargs):
        threads.append(threading.current_thread() is threading.main_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(common, "simulation_estimate", counted)
    assert not asyncio.run(common.load_prepared(SimpleNamespace(), data)).simulation_seconds
    assert len(data) < common.LOADED_IN_A_THREAD_BYTES and threads == []  # small: left to a call
    monkeypatch.setattr(common, "LOADED_IN_A_THREAD_BYTES", len(data))
    runtime = fake_runtime(registry=registry,
                              settings=Settings(max_simulation_seconds=estimate * 2))
    loaded = asyncio.run(common.load_prepared(runtime, data))
    assert loaded.simulation_seconds == pytest.approx(estimate) and threads == [False]
    assert asyncio.run(common.load_prepared(runtime, data, estimate=False)).simulation_seconds \
        is None
    # Past the limit, a call refuses it as the simulator would, before shipping it there.
    from streams.agents.execution import one_tenants_call

    runtime.settings = Settings(max_simulation_seconds=estimate / 2)
    loaded_job = job(registry)
    loaded_job.prepared = loaded
    ((error, seconds),) = asyncio.run(one_tenants_call(runtime, [loaded_job])).values()
    assert isinstance(error, JobTooLarge) and "max_simulation_seconds" in str(error)
    assert seconds == 0.0


def test_a_job_past_the_simulation_limit_is_refused_before_the_breaker_and_takes_no_trial(
        ) -> None:
    """A job past max_simulation_seconds is JobTooLarge whatever its backend's breaker says,
    as in a batch call: checked after the breaker, it took the half-open breaker's one trial
    (refusing every other job on the backend for another reset timeout), and with the breaker
    open it went to its fallback where a batch dead-lettered it."""
    from workers.errors import JobTooLarge

    clock = [0.0]
    registry = BackendRegistry()
    runtime = fake_runtime(
        registry=registry, breakers=BreakerBoard(1, 30.0, clock=lambda: clock[0]),
        executor=ThreadPoolExecutor(1), simulator=None, host_workers=None)
    one = job(registry)
    runtime.settings = Settings(max_simulation_seconds=one.prepared.simulation_seconds / 2)
    breaker = runtime.breakers.for_backend("aer.noisy")
    breaker.record_failure()
    for now in (1.0, 31.0):  # open, then half-open with its trial not yet taken
        clock[0] = now
        with pytest.raises(JobTooLarge, match="max_simulation_seconds"):
            asyncio.run(JobRunner(runtime, {}).call_backend(one, one.prepared))
    assert breaker.allow()  # the trial is still there for a job that can run
    runtime.executor.shutdown()


def test_a_job_past_its_deadline_calls_no_backend_and_counts_on_no_breaker() -> None:
    """Called with no time left, a fallback backend timed out at once and each timeout counted
    on its breaker: six late jobs opened a healthy backend's breaker for every tenant, and a
    call in a worker thread cut short by a deadline ran on with its backend marked overrunning
    (a red-team run)."""
    from workers.errors import DeadlineExceeded

    runtime = thread_calls()
    late = job(runtime.registry, sets=1, shots=100)
    late.request["deadline_ms"] = 0  # from its submission: passed
    late.request["submitted_at_ms"] = int(time.time() * 1000) - 1000
    breaker = runtime.breakers.for_backend("aer.noisy")
    calls = []
    runner = JobRunner(runtime, {})
    try:
        import streams.agents.execution as execution

        original = execution.call_once

        async def counted(*args, **kwargs):
            calls.append(args)
            return await original(*args, **kwargs)

        execution.call_once = counted
        for _ in range(4):
            with pytest.raises(DeadlineExceeded, match="deadline passed before aer.noisy"):
                asyncio.run(runner.call_backend(late, late.prepared))
        assert calls == [] and breaker.consecutive_failures == 0 and breaker.allow()
        # A deadline still ahead does not bound a call in a worker thread: it answers.
        late.request["deadline_ms"] = 60_000
        counts, _ = asyncio.run(runner.call_backend(late, late.prepared))
        assert counts == execute(late.prepared, runtime.registry, late.seed)
        assert not runtime.overrunning_calls
    finally:
        execution.call_once = original
        runtime.executor.shutdown()


def test_jobs_a_breaker_refused_are_not_counted_as_circuits_of_a_call() -> None:
    """qlane_execute_batch_size counted the circuits of jobs an open breaker refused, as if
    the backend had been called with them (a red-team run)."""
    from streams.agents.execution import one_tenants_call
    from streams.ops import metrics
    from workers.execution.breaker import BreakerOpen

    runtime = thread_calls()
    runtime.settings = Settings(simulator_process=False, execute_timeout_s=30)
    one = job(runtime.registry, sets=3, shots=100)
    total = "qlane_execute_batch_size_sum"
    before = metrics.REGISTRY.get_sample_value(total) or 0.0
    asyncio.run(one_tenants_call(runtime, [one]))
    assert metrics.REGISTRY.get_sample_value(total) - before == len(one.prepared.tasks)
    breaker = runtime.breakers.for_backend("aer.noisy")
    breaker.record_failure()
    breaker.record_failure()
    ((error, _),) = asyncio.run(one_tenants_call(runtime, [one])).values()
    assert isinstance(error, BreakerOpen)
    assert metrics.REGISTRY.get_sample_value(total) - before == len(one.prepared.tasks)
    runtime.executor.shutdown()
