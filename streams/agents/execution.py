"""Running one prepared job on its backend: the rules the execute stage and the fused path share.

A backend call goes through the backend's circuit breaker, bounded by the call timeout and
the job's deadline. A retryable failure is retried alone (bounded exponential backoff with
jitter); when retries run out, the breaker is open or the deadline has passed, the job's
fallback policy decides between a fallback target and a dead letter (StageFailure).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from fallback.classical import run_classical_within
from fallback.policy import CLASSICAL, FallbackPolicy, FallbackReason
from schemas.codec import codec
from streams.agents.common import (
    StageFailure,
    load_prepared,
    prepare_in_worker,
    sandbox_pool,
    sandbox_request,
    vet_prepared,
)
from streams.agents.threads import (
    in_thread_within,
    overrunning,
    still_overrunning,
    timed,
)
from streams.ops import metrics
from streams.runtime import Runtime, now_ms
from streams.settings import SIMULATOR_PROCESS_MIN_CORES
from streams.workflow import accounting
from streams.workflow.deadletter import SourceRecord, is_retryable
from streams.workflow.results import deadline_ms, past
from workers.circuits.sandbox import SIMULATE, SandboxBounds, SandboxPool
from workers.cores import usable_cores
from workers.errors import (
    BackendUnavailable,
    BudgetExceeded,
    DeadlineExceeded,
    InvalidJob,
    JobTooLarge,
    QlaneError,
    SandboxCrashed,
    SandboxTimeout,
    SimulationTimeout,
)
from workers.execution.batching import Outcome, timed_batch
from workers.execution.breaker import BreakerOpen
from workers.execution.preparation import (
    PreparedJob,
    execute,
    simulation_estimate,
    too_much_simulation,
)
from workers.execution.simulator import (
    WARMED_UP,
    outcomes_of,
    request_for,
    seconds_of,
    shares,
    simulated_here,
)
from workers.host_workers import REFRESH_S, HostWorkers
from workers.jobs import JobSpec
from workers.seeds import job_seed

STAGE = "execute"
log = logging.getLogger("qlane")
SIMULATOR_START_S = 60.0  # how long a call may wait for a simulator process to start
ALREADY_EXECUTED = frozenset({"executed", "done"})


@dataclass
class Job:
    """One job to run: its ExecuteTask fields, its request and its prepared circuits."""

    source: SourceRecord
    task: dict
    request: dict
    prepared: PreparedJob
    seed: int
    prepared_bytes: bytes | None = None  # what `prepared` was decoded from, when at hand
    reserved_usd: float = 0.0  # its estimate held in the tenant's budget until its charge
    fallback_prepare_s: float = 0.0  # wall seconds its fallback targets took to prepare

    @property
    def workflow_id(self) -> str:
        return self.task["workflow_id"]

    @property
    def deadline_ms(self) -> int | None:
        return deadline_ms(self.request, self.task["accepted_at_ms"])

    @classmethod
    def of(cls, source: SourceRecord, task: dict, request: dict,
           prepared: PreparedJob, prepared_bytes: bytes | None = None) -> Job:
        return cls(source, task, request, prepared, job_seed(task["workflow_id"], request["seed"]),
                   prepared_bytes)

    def bytes_of(self, prepared: PreparedJob) -> bytes:
        """`prepared` as bytes: the job's own as received, a fallback's packed now."""
        if prepared is self.prepared and self.prepared_bytes is not None:
            return self.prepared_bytes
        return prepared.to_bytes()


@dataclass
class Answered:
    """Each job's outcome of a backend call, and its part of the call's backend seconds (what
    the job is billed; measured where the backend ran, so waits for it are not in them)."""

    outcomes: list[Outcome]
    seconds: list[float]


@dataclass
class Executed:
    counts: list[dict[str, int]]
    prepared: PreparedJob
    seconds: float
    mode: str = "quantum"
    fallback_reason: str | None = None
    charged_backend: str | None = None
    # A fallback's own: the estimate of the target that answered (the job's task holds its
    # first backend's), and the classical fallback's name, which no price is charged for.
    estimate_usd: float | None = None
    answered_by: str | None = None


async def decode_job(runtime: Runtime, source: SourceRecord) -> Job:
    """A stage.execute record (ExecuteTask) as a Job; its prepared job loaded in a sandbox
    first (vet_prepared)."""
    task = codec("ExecuteTask").decode(source.value)
    try:
        request = codec("JobRequest").decode(task["request"])
        await vet_prepared(runtime, task["prepared"])
        prepared = await load_prepared(runtime, task["prepared"])
    except Exception as error:
        raise StageFailure(task["workflow_id"], error) from error
    return Job.of(source, task, request, prepared, task["prepared"])


async def simulate(runtime: Runtime, items: list[tuple[bytes, int, str]],
                   wall_s: float) -> Answered:
    """Outcomes of (prepared bytes, seed, backend) items run in the simulator processes,
    one call per share of the work, each bounded by `wall_s` (its process is killed past
    it: SandboxTimeout), with each item's seconds as the process timed them."""
    pool = runtime.simulator
    split = shares([len(data) for data, _, _ in items], pool.size)
    limit = runtime.settings.max_simulation_seconds
    calls = [pool.run_exchange(request_for(runtime.registry, [items[i] for i in share],
                                           cpu_s=math.ceil(wall_s),
                                           max_simulation_seconds=limit), wall_s)
             for share in split]
    # Every call ends before the batch does (none is left running when one fails).
    answers = await asyncio.gather(*calls, return_exceptions=True)
    failed = [answer for answer in answers if isinstance(answer, BaseException)]
    if failed:
        # A timeout first: it counts on the backend's breaker, a crash does not.
        raise next((e for e in failed if isinstance(e, SandboxTimeout)), failed[0])
    outcomes: list[Outcome | None] = [None] * len(items)
    seconds = [0.0] * len(items)
    for share, (header, _) in zip(split, answers, strict=True):
        answered = zip(share, outcomes_of(header, len(share)), seconds_of(header, len(share)),
                       strict=True)
        for index, outcome, took in answered:
            outcomes[index] = outcome
            seconds[index] = took
    return Answered(outcomes, seconds)  # type: ignore[arg-type]


# How long a starting worker waits for the workers started with it to register.
HOST_SETTLE_S = REFRESH_S


def join_host(runtime: Runtime) -> None:
    """Register this worker among the host's workers (workers.host_workers), whatever its
    `simulator_process`: a worker set to `true` or `false` shares the cores as much as one
    set to `auto`, and the `auto` ones count it. It leaves at exit; a killed worker's entry
    is dropped by the others."""
    if runtime.host_workers is not None:
        return
    directory = runtime.settings.host_workers_dir
    runtime.host_workers = HostWorkers(Path(directory) if directory else None,
                                       cores=usable_cores).join()
    atexit.register(runtime.host_workers.leave)


def simulator_process_wanted(runtime: Runtime, close_idle: bool = True) -> bool:
    """Whether Aer calls go to the simulator process now: as set, or with `auto`, while this
    worker has at least SIMULATOR_PROCESS_MIN_CORES of the host's cores for itself (the
    cores it may use, divided among the workers registered on the host that share them).
    Unless told not to, closes a process unused long enough (`close_idle_simulator`)."""
    settings = runtime.settings
    join_host(runtime)
    fit_aer_threads(runtime)
    if not settings.simulator_process or not settings.simulator_process_auto:
        return settings.simulator_process
    host = runtime.host_workers
    wanted = host.cores_per_worker() >= SIMULATOR_PROCESS_MIN_CORES
    if wanted != runtime.simulator_wanted:
        runtime.simulator_wanted = wanted
        runtime.simulator_unwanted_since = None if wanted else time.monotonic()
        log.info("simulator: %s (%d worker(s) on this host share its %.3g usable cores; "
                 "%d Aer thread(s) per call in the worker)",
                 "in a process of its own" if wanted else "in the worker's threads",
                 host.sharing(), usable_cores(), runtime.registry.parallel_threads)
    if not wanted and close_idle:
        close_idle_simulator(runtime)
    return wanted


def close_idle_simulator(runtime: Runtime) -> None:
    """Close the simulator process once `auto` has sent Aer to the worker's threads for
    `simulator_idle_close_s` and no call runs in it; it starts again when wanted. Kept that
    long in case the other workers leave again: a new process takes 5-10 s to start, an idle
    one holds its memory."""
    pool, since = runtime.simulator, runtime.simulator_unwanted_since
    if pool is not None and since is not None:
        # From its last call's end: counted from the call's start, a process was closed as
        # "unused for 74 s" as each call of 74 s ended (a red-team run).
        since = max(since, pool.last_used)
    idle_for = None if since is None else time.monotonic() - since
    if pool is None or idle_for is None or idle_for < runtime.settings.simulator_idle_close_s:
        return
    if not pool.idle():
        return  # a call decided before the switch still runs: at a later batch
    runtime.simulator = None
    pool.close()
    log.info("simulator: its process closed, unused for %.0f s (other workers share the "
             "host's cores); it starts again when this worker has two to itself",
             time.monotonic() - since)


def fit_aer_threads(runtime: Runtime) -> None:
    """The OpenMP threads of the Aer calls this worker runs in its own threads: as set
    (`simulator_threads`), else the whole cores it has, at least one: its usable cores, with
    `auto` divided among the host's workers that share them. Aer's default is every core the
    machine has, and its threads then compete with the other workers' and burn CPU waiting
    for each other (docs/performance.md, "Aer's threads")."""
    threads = runtime.settings.simulator_threads
    if not threads:
        host = runtime.host_workers if runtime.settings.simulator_process_auto else None
        if host is None and runtime.registry.parallel_threads:
            return  # decided from this process's usable cores, which do not change
        cores = usable_cores() if host is None else host.cores_per_worker()
        threads = max(1, math.floor(cores))
    runtime.registry.set_parallel_threads(threads)


async def start_simulator_when_settled(runtime: Runtime) -> None:
    """At a worker's start: its simulator process, warmed up while the worker joins its group.
    With `auto` the decision waits HOST_SETTLE_S: workers started together register moments
    apart, and the first would otherwise start a process it stops using at its next count."""
    if runtime.settings.simulator_process_auto:
        join_host(runtime)
        await asyncio.sleep(HOST_SETTLE_S)
        runtime.host_workers.sharing(fresh=True)
    start_simulator(runtime)


def start_simulator(runtime: Runtime, needed: bool = False) -> None:
    """The simulator process pool, when the settings ask for it (or a long call `needed`
    it) and it is not running."""
    settings = runtime.settings
    if runtime.simulator is not None:
        return
    if not needed and not simulator_process_wanted(runtime):
        if not settings.simulator_process:  # else `auto` said why, and starts it when wanted
            log.info("simulator: in the worker's threads (QLANE_SIMULATOR_PROCESS off; %.3g "
                     "usable cores)", usable_cores())
        return
    bounds = SandboxBounds(wall_s=settings.execute_timeout_s,
                           cpu_s=math.ceil(settings.execute_timeout_s),
                           memory_mb=settings.sandbox_memory_mb,
                           output_mb=settings.sandbox_output_mb, startup_s=SIMULATOR_START_S)
    runtime.simulator = SandboxPool(bounds, size=settings.simulator_processes,
                                    kind=SIMULATE)
    log.info("simulator: %d process(es) of their own (QLANE_SIMULATOR_PROCESS; %.3g usable "
             "cores)", settings.simulator_processes, usable_cores())


def in_simulator_process(runtime: Runtime, backends, prepared=()) -> bool:
    """Whether calls on `backends` go to the simulator process (started on first use): as
    the settings want, and wherever Aer runs in the worker's threads, also a call whose
    `prepared` jobs are estimated above `thread_simulation_max_s`. Aer holds the interpreter
    lock in a worker thread: a 40 s call stopped the worker's event loop for 40 s (no
    heartbeat, no timeout, no other stage), and a call past the timeout could not be
    stopped; a process is killed at the timeout."""
    if not simulated_here(runtime.registry, backends):
        return False
    if overrunning(runtime, backends):
        # A call of theirs still runs past its timeout in a worker thread, which cannot be
        # stopped: more such calls there filled the worker's threads and stalled every stage
        # (129 s; a red-team run). The process is killed at the timeout.
        start_simulator(runtime, needed=True)
        return True
    wanted = simulator_process_wanted(runtime, close_idle=False)
    if wanted and set(backends) <= WARMED_UP:
        start_simulator(runtime)
        return True
    # A device simulation (ibm.*) is built in the process when it first needs it (5.5 s for
    # ibm.torino, and again at a noise scale's change), while the worker's warm-up built it
    # here: a light call stays here (a first Bell job with a 5 s deadline missed it; a
    # red-team run), a long one goes there, as it would with `auto`.
    limit = runtime.settings.thread_simulation_max_s
    estimates: dict = {}
    # Each job's estimate was made where it was loaded, in a thread: walking its templates
    # again here held the event loop 3-5 s per large job (a red-team run).
    estimated = sum(job.simulation_seconds if getattr(job, "simulation_seconds", None) is not None
                    else simulation_estimate(job, runtime.registry.get(job.backend), estimates)
                    for job in prepared)
    auto = runtime.settings.simulator_process_auto and not wanted
    if estimated <= limit:
        if auto:
            close_idle_simulator(runtime)
        return False
    log.info("a call estimated at %.3g s of simulation runs in a simulator process, not in "
             "the worker's threads (thread_simulation_max_s %g)", estimated, limit)
    # Its idle time counts from its last call: counted from the switch to the threads, a
    # process in use every few seconds was closed and started again for each long call
    # after the first minute (20 starts in 150 s over two workers, a red-team run).
    if auto:
        runtime.simulator_unwanted_since = time.monotonic()
    start_simulator(runtime, needed=True)
    return True


async def call_once(runtime: Runtime, prepared: PreparedJob, data: bytes, seed: int,
                    timeout: float, deadline_s: float | None = None,
                    ) -> tuple[list[dict[str, int]], float]:
    """One call for a prepared job (`data`: its bytes) where the stages run it
    (`in_simulator_process`): the counts and the seconds the backend ran. Past `timeout`
    (or `deadline_s`, the job's time left, in the simulator process only): TimeoutError, or
    SandboxTimeout from the simulator process, which is killed then (the outer bound only
    covers its start). A worker thread cannot be stopped: bounded by a deadline it ran on
    past it, its backend counted as overrunning (its calls refused). Its callers refuse a
    job past the simulation limit first (`past_simulation_limit`), as the simulator would,
    before it is shipped there."""
    with timed_call([prepared.backend]):
        if not in_simulator_process(runtime, [prepared.backend], [prepared]):
            return await in_thread_within(
                runtime, timeout, [prepared.backend], timed(execute), prepared,
                runtime.registry, seed, runtime.settings.max_simulation_seconds)
        if deadline_s is not None:
            timeout = min(timeout, deadline_s)
        answered = await asyncio.wait_for(
            simulate(runtime, [(data, seed, prepared.backend)], timeout),
            timeout + SIMULATOR_START_S,
        )
    (outcome,), (seconds,) = answered.outcomes, answered.seconds
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome, seconds


def simulation_timeout(backend: str, timeout: float) -> SimulationTimeout:
    return SimulationTimeout(
        f"the simulation on {backend} took longer than {timeout:.0f}s "
        "(execute_timeout_s): fewer shots, gates, qubits or parameter sets")


async def simulate_alone(runtime: Runtime, prepared: PreparedJob,
                         seed: int) -> tuple[list[dict[str, int]], float]:
    """`call_once` bounded by execute_timeout_s, a timeout being SimulationTimeout: the
    variational stage's evaluations, which ran in threads whatever their size."""
    timeout = runtime.settings.execute_timeout_s
    if (too_large := past_simulation_limit(runtime, prepared)) is not None:
        raise too_large
    try:
        return await call_once(runtime, prepared, prepared.to_bytes(), seed, timeout)
    except (TimeoutError, SandboxTimeout):
        raise simulation_timeout(prepared.backend, timeout) from None


async def simulate_batch(runtime: Runtime, jobs: list[Job]) -> Answered:
    """One call in the simulator process for a batch, under execute_batch's breaker rules:
    a backend whose breaker is open gets BreakerOpen for its jobs; a retryable error in a
    backend's jobs counts one failure on its breaker, else one success."""
    outcomes: list[Outcome | None] = [None] * len(jobs)
    seconds = [0.0] * len(jobs)
    groups: dict[str, list[int]] = {}
    for index, job in enumerate(jobs):
        groups.setdefault(job.prepared.backend, []).append(index)
    sent: dict[str, list[int]] = {}
    for name, indices in groups.items():
        breaker = runtime.breakers.for_backend(name)
        if breaker.allow():
            sent[name] = indices
            continue
        for index in indices:
            outcomes[index] = BreakerOpen(name, breaker.retry_after_s())
    order = [index for indices in sent.values() for index in indices]
    if order:
        items = [(jobs[i].bytes_of(jobs[i].prepared), jobs[i].seed, jobs[i].prepared.backend)
                 for i in order]
        # A call past the timeout raises SandboxTimeout without a breaker failure: these are
        # the worker's own simulators, slow because of a job (each job then runs alone).
        answered = await simulate(runtime, items, runtime.settings.execute_timeout_s)
        for index, outcome, took in zip(order, answered.outcomes, answered.seconds,
                                        strict=True):
            outcomes[index] = outcome
            seconds[index] = took
        for name, indices in sent.items():
            breaker = runtime.breakers.for_backend(name)
            if any(is_retryable(outcomes[i]) for i in indices):
                breaker.record_failure()
            else:
                breaker.record_success()
    return Answered(outcomes, seconds)  # type: ignore[arg-type]


async def batch_outcomes(runtime: Runtime, jobs: list[Job]) -> dict[str, tuple[object, float]]:
    """One backend call per backend and tenant for the jobs: each job's slot (counts or its
    error) and its part of the call's backend seconds, by source address; a tenant's jobs
    are left out when their call failed as a whole (each then runs alone).

    A call's seconds are shared by estimates, and an estimate is an order of magnitude: one
    tenant's job estimated at 0.12 s ran 40 s, and another tenant's job in its call was
    billed 10.97 s for the 0.29 s it took alone (a red-team run). Tenants' jobs never share a
    call, so a job's bill depends only on its own tenant's jobs."""
    tenants: dict[str, list[Job]] = {}
    for job in jobs:
        tenants.setdefault(job.request["tenant"], []).append(job)
    outcomes: dict[str, tuple[object, float]] = {}
    for group in tenants.values():
        outcomes |= await one_tenants_call(runtime, group)
    return outcomes


async def one_tenants_call(runtime: Runtime,
                           jobs: list[Job]) -> dict[str, tuple[object, float]]:
    """`batch_outcomes` for the jobs of one tenant: {} when the call failed as a whole."""
    if not jobs:
        return {}
    # Refused before the call by the estimate made as each job was loaded, as the simulator
    # would refuse it: 29 jobs estimated at 12,900 s each took 80 s to ship to the simulator
    # process, which refused them (a red-team run).
    refused = {j.source.address: (error, 0.0) for j in jobs
               if (error := past_simulation_limit(runtime, j.prepared)) is not None}
    # A backend still in a call past its timeout: its jobs alone are refused when they cannot
    # leave for the simulator process (a healthy backend's job in a batch with a hung one was
    # refused with it, and its breaker opened; a red-team run), and left out of a batch that
    # cannot go there, to go alone (such a batch went to the threads, and every job in it was
    # refused with the overrunning one's).
    left_out: set[str] = set()
    if runtime.overrunning_calls:
        backends = {j.prepared.backend for j in jobs}
        stuck = set(overrunning(runtime, backends))
        batch_simulated_here = simulated_here(runtime.registry, backends)
        for j in jobs:
            if j.prepared.backend not in stuck:
                continue
            if not simulated_here(runtime.registry, [j.prepared.backend]):
                refused[j.source.address] = (still_overrunning(j.prepared.backend), 0.0)
            elif not batch_simulated_here:
                left_out.add(j.source.address)
    if refused or left_out:
        return refused | await one_tenants_call(
            runtime, [j for j in jobs
                      if j.source.address not in refused and j.source.address not in left_out])
    with timed_call({j.prepared.backend for j in jobs}):
        outcomes = await call_for_batch(runtime, jobs)
    # The circuits the backend was given: a job its breaker refused was counted too (a
    # red-team run read calls of a backend that was refusing them all). A batch that failed
    # as a whole is counted as its jobs are called again one by one.
    called = [j for j in jobs if j.source.address in outcomes
              and not isinstance(outcomes[j.source.address][0], BreakerOpen)]
    if called:
        metrics.EXECUTE_BATCH_SIZE.observe(sum(len(j.prepared.tasks) for j in called))
    return outcomes


@contextlib.contextmanager
def timed_call(backends: set[str] | list[str]):
    """Observe a backend call's wall time (qlane_backend_call_seconds): the stage duration
    of a batch's records leaves it out, and a 2 s backend showed 3.5 ms a job there (a
    red-team run)."""
    label = next(iter(backends)) if len(set(backends)) == 1 else "several"
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics.BACKEND_CALL_DURATION.labels(label).observe(time.perf_counter() - started)


async def call_for_batch(runtime: Runtime,
                         jobs: list[Job]) -> dict[str, tuple[object, float]]:
    """`one_tenants_call`'s backend call and what its failures mean for the jobs."""
    try:
        if in_simulator_process(runtime, {j.prepared.backend for j in jobs},
                                [j.prepared for j in jobs]):
            answered = await simulate_batch(runtime, jobs)
            outcomes, seconds = answered.outcomes, answered.seconds
        else:
            # Bounded as a call alone is (`call_once`): a hung backend held the stage 690 s
            # and counting, with no timeout, failure or dead letter (a red-team run). The
            # thread itself cannot be stopped; its jobs go on without it.
            outcomes, seconds = await in_thread_within(
                runtime, runtime.settings.execute_timeout_s, {j.prepared.backend for j in jobs},
                functools.partial(timed_batch, breakers=runtime.breakers,
                                  max_simulation_seconds=runtime.settings.max_simulation_seconds),
                [(j.prepared, j.seed) for j in jobs], runtime.registry)
    except InvalidJob as error:
        if len(jobs) > 1:
            log.warning("batch of %d jobs refused as a whole (%s); running them one by one",
                        len(jobs), type(error).__name__)
            return {}
        # One job, refused for what it is (its reply past the sandbox's output bound): run
        # alone it would be refused again, after the same simulation (107 s twice for a
        # 20-qubit Estimator job, a red-team run).
        return {jobs[0].source.address: (error, 0.0)}
    except BackendUnavailable as error:  # a backend of the call still overruns an earlier one
        return {j.source.address: (error, 0.0) for j in jobs}
    except (SandboxTimeout, TimeoutError):
        if len(jobs) > 1:  # each job alone gets the whole timeout: the slow one fails alone
            log.warning("batch of %d jobs ran past the execute timeout; running them one by "
                        "one", len(jobs))
            return {}
        # One job past the timeout in the simulator process: run alone it ran as long again,
        # its dead letter came 14-24 s after the first timeout and a Bell job waited
        # behind it (a red-team run). Its own simulation's timeout, at once.
        job = jobs[0]
        return {job.source.address: (simulation_timeout(
            job.prepared.backend, runtime.settings.execute_timeout_s), 0.0)}
    except Exception:  # never lose the stage to a batch: run the records one by one
        log.exception("batch of %d jobs failed as a whole; running them one by one", len(jobs))
        return {}
    return {j.source.address: (o, s) for j, o, s in zip(jobs, outcomes, seconds, strict=True)}


async def prepare_fallback(runtime: Runtime, spec: JobSpec) -> PreparedJob:
    """The job prepared for a fallback target: in a sandbox, as it was at submission. In the
    worker's threads, a 46 KB program (500 ctrl(10) gates on 11 qubits) naming four device
    targets held every stage 47 s and left the worker 0.9 GB larger (a red-team run)."""
    pool = sandbox_pool(runtime)
    if pool is None:
        return await prepare_in_worker(runtime, spec)
    prepared = await pool.run(await sandbox_request(runtime, spec))
    return await load_prepared(runtime, prepared.to_bytes())


def past_simulation_limit(runtime: Runtime, prepared: PreparedJob) -> JobTooLarge | None:
    """JobTooLarge for a job whose known estimate is past max_simulation_seconds, else None."""
    estimate = getattr(prepared, "simulation_seconds", None)
    if estimate is None:
        return None
    return too_much_simulation(prepared, estimate, runtime.settings.max_simulation_seconds)


def mark_in_call(runtime: Runtime, jobs: list[Job]) -> None:
    """Until its record is handled, no table entry says that a job in a batch's call runs
    (the fused path's has no entry yet; the staged path's is still `prepared`): a cancel
    looks here (streams/workflow/cancel.py), and so does the fused path's next batch."""
    for job in jobs:
        runtime.in_batch_call.setdefault(job.request["workflow_id"], {})[
            job.source.address] = job.source.topic


def unmark_in_call(runtime: Runtime, sources: list[SourceRecord]) -> None:
    for source in sources:
        workflow_id = (source.key or b"").decode(errors="replace")
        marks = runtime.in_batch_call.get(workflow_id)
        if marks is not None and marks.pop(source.address, None) is not None and not marks:
            del runtime.in_batch_call[workflow_id]


def release_hold(runtime: Runtime, job: Job) -> None:
    """Give back the job's held estimate (idempotent)."""
    if job.reserved_usd:
        accounting.release(runtime, job.request, job.reserved_usd)
        job.reserved_usd = 0.0


def fallbacks_failed(cause: BaseException,
                     failures: list[tuple[str, QlaneError]]) -> BaseException:
    """The error a job whose fallbacks all failed is dead-lettered with: the one that sent it
    to them, which says what is wrong with its backend, naming what each target answered.
    The last target's error stood for it: a backend outage came out as the classical
    fallback's CircuitTooLarge, `rejected`, and paged nobody (a red-team run)."""
    if not failures:
        return cause
    tried = "; ".join(f"{target}: {type(error).__name__}: {error}"[:300]
                      for target, error in failures)
    told = type(cause).__new__(type(cause))  # its attributes, not its constructor's wording
    told.__dict__.update(getattr(cause, "__dict__", {}))
    told.args = (f"{cause}; its fallbacks failed too ({tried})",)
    told.__cause__ = failures[-1][1]
    return told


class JobRunner:
    """Runs jobs of one worker: breaker, timeout, deadline, retries, fallbacks, the charge."""

    def __init__(self, runtime: Runtime, table) -> None:
        self.runtime = runtime
        self.table = table
        self.settings = runtime.settings

    def state(self, job: Job) -> str | None:
        return (self.table.get(job.workflow_id) or {}).get("state")

    def already_executed(self, job: Job) -> bool:
        return self.state(job) in ALREADY_EXECUTED

    def cancelled(self, job: Job) -> bool:
        return self.state(job) == "cancelled"

    def runnable(self, job: Job) -> bool:
        return (not self.already_executed(job) and not self.cancelled(job)
                and job.task.get("fallback_reason") is None)

    @staticmethod
    def past_deadline(job: Job) -> bool:
        return past(job.deadline_ms, now_ms())

    async def run(self, job: Job, outcome: object = None, share: float = 0.0) -> Executed:
        """The job's counts: from `outcome` (its slot of a batch call: counts, an error, or
        None when it was not in one) or from calls of its own, else from its fallbacks."""
        reason = job.task.get("fallback_reason")
        cause: BaseException = BudgetExceeded(reason or "")
        if reason is None and not job.reserved_usd:
            try:
                job.reserved_usd = accounting.reserve(
                    self.runtime, job.request, accounting.estimate_usd(self.runtime, job.prepared))
            except BudgetExceeded as error:
                reason, cause = FallbackReason.BUDGET_EXCEEDED.value, error
        try:
            return await self.run_reserved(job, reason, cause, outcome, share)
        except BaseException:
            self.release(job)
            raise

    def release(self, job: Job) -> None:
        release_hold(self.runtime, job)

    async def run_reserved(self, job: Job, reason: str | None, cause: BaseException,
                           outcome: object, share: float) -> Executed:
        if reason is None and self.past_deadline(job):
            reason = FallbackReason.DEADLINE_MISSED.value
            cause = DeadlineExceeded(f"deadline passed before {job.prepared.backend} ran it")
        elif reason is None and isinstance(outcome, list):
            return Executed(outcome, job.prepared, share, charged_backend=job.prepared.backend)
        elif reason is None:
            if isinstance(outcome, BaseException) and not is_retryable(outcome):
                raise StageFailure(job.workflow_id, outcome)
            try:
                counts, seconds = await self.run_with_retries(
                    job, failed_in_batch=outcome is not None)
                return Executed(counts, job.prepared, seconds,
                                charged_backend=job.prepared.backend)
            except BreakerOpen as error:
                reason, cause = FallbackReason.BREAKER_OPEN.value, error
            except DeadlineExceeded as error:
                reason, cause = FallbackReason.DEADLINE_MISSED.value, error
            except Exception as error:
                if not is_retryable(error):
                    raise StageFailure(job.workflow_id, error) from error
                reason, cause = FallbackReason.RETRIES_EXHAUSTED.value, error
        self.release(job)  # a fallback is checked against the budget on its own terms
        return await self.run_fallback(job, reason, cause)

    async def call_backend(self, job: Job,
                           prepared: PreparedJob) -> tuple[list[dict[str, int]], float]:
        """One attempt, behind the breaker, bounded by the call timeout and the deadline:
        the counts, and the seconds the backend ran (what the job is billed)."""
        runtime = self.runtime
        # Before the breaker, as in a batch call: a job too large for its backend is
        # JobTooLarge whatever the breaker's state, and takes no half-open trial.
        if (too_large := past_simulation_limit(runtime, prepared)) is not None:
            raise too_large
        if self.past_deadline(job):
            # Called with no time left, a fallback backend timed out at once, and each such
            # timeout counted on its breaker: six late jobs opened a healthy backend's breaker
            # for every tenant (a red-team run).
            raise DeadlineExceeded(f"deadline passed before {prepared.backend} ran it")
        breaker = runtime.breakers.for_backend(prepared.backend)
        if not breaker.allow():
            raise BreakerOpen(prepared.backend, breaker.retry_after_s())
        timeout = self.settings.execute_timeout_s
        left = (None if job.deadline_ms is None
                else max(0.0, (job.deadline_ms - now_ms()) / 1000))
        try:
            counts, seconds = await call_once(runtime, prepared, job.bytes_of(prepared),
                                              job.seed, timeout, left)
        except (TimeoutError, SandboxTimeout):
            # A simulator of this worker's own is slow because of the job: that says nothing
            # about the backend for other jobs, and another try takes as long again. (Only
            # those are cut short by a deadline: other backends run in worker threads.)
            local = simulated_here(runtime.registry, [prepared.backend])
            if not local:
                breaker.record_failure()
            if self.past_deadline(job):
                raise DeadlineExceeded(
                    f"no answer from {prepared.backend} before the deadline"
                ) from None
            if local:
                raise simulation_timeout(prepared.backend, timeout) from None
            raise BackendUnavailable(
                f"{prepared.backend} took longer than {timeout:.0f}s"
            ) from None
        except Exception as error:
            # A crashed simulator process is most likely the job's doing, not the backend's:
            # it is retried, but does not open the breaker for every other job.
            if is_retryable(error) and not isinstance(error, SandboxCrashed):
                breaker.record_failure()
            raise
        breaker.record_success()
        return counts, seconds

    async def run_with_retries(
        self, job: Job, failed_in_batch: bool, prepared: PreparedJob | None = None
    ) -> tuple[list[dict[str, int]], float]:
        """Attempts on the job alone; after a failed batch call, the first is a retry.
        `prepared`: the job prepared for a fallback backend (default: its own). The counts and
        backend seconds of the attempt that answered: failed attempts and the waits between
        them are not billed."""
        settings = self.settings
        prepared = prepared or job.prepared
        done_before = 1 if failed_in_batch else 0
        if done_before and settings.execute_retries == 0:
            raise BackendUnavailable(f"{prepared.backend} failed and retries are off")
        retrying = AsyncRetrying(
            retry=retry_if_exception(
                lambda e: is_retryable(e) and not isinstance(e, BreakerOpen)
            ),
            stop=stop_after_attempt(1 + settings.execute_retries - done_before),
            wait=wait_exponential_jitter(
                multiplier=settings.retry_backoff_s, max=settings.retry_backoff_max_s
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number + done_before
                if number > 1:
                    metrics.RETRIES.labels(prepared.backend).inc()
                    await self.runtime.status(job.workflow_id, "retrying", STAGE, attempt=number)
                return await self.call_backend(job, prepared)
        raise AssertionError("unreachable: tenacity re-raises the last error")

    async def run_fallback(self, job: Job, reason: str, cause: BaseException) -> Executed:
        runtime = self.runtime
        policy = FallbackPolicy.from_list(job.request.get("fallback"))
        tried = {job.prepared.backend}
        failures: list[tuple[str, QlaneError]] = []
        while (target := policy.next_target(tried)) is not None:
            tried.add(target)
            if target != CLASSICAL and job.fallback_prepare_s >= self.settings.sandbox_cpu_s:
                # Each target is prepared in the sandbox while the stage waits: a 46 KB
                # program naming four device targets held every job behind it 76 s (a
                # red-team run). The chain gets one sandbox CPU bound of wall time.
                log.info("%s: fallback %s not tried: its fallbacks took %.1f s to prepare",
                         job.workflow_id, target, job.fallback_prepare_s)
                continue
            await runtime.status(job.workflow_id, "fallback", STAGE, detail=f"{target}: {reason}")
            try:
                executed = await self.run_on_fallback(job, target, reason)
            except QlaneError as error:
                failures.append((target, error))
                continue
            # Once per job answered (each target tried counted: a job naming 4 made-up
            # backends counted 4; a red-team run).
            metrics.FALLBACKS.labels(reason).inc()
            return executed
        raise StageFailure(job.workflow_id, fallbacks_failed(cause, failures))

    async def run_on_fallback(self, job: Job, target: str, reason: str) -> Executed:
        """The job's counts from one fallback target."""
        runtime, settings = self.runtime, self.settings
        if target == CLASSICAL:
            # Bounded as a backend call is: unbounded, 40 parameter sets on 20 qubits ran
            # 352 s in a worker thread, and every job behind it waited (a red-team run).
            timeout = settings.execute_timeout_s
            try:
                with timed_call([CLASSICAL]):  # a slow fallback is seen as a slow backend
                    counts, seconds = await in_thread_within(
                        runtime, timeout, [CLASSICAL], timed(run_classical_within),
                        job.prepared, job.seed, settings.fallback_max_qubits,
                        min(timeout, settings.max_simulation_seconds))
            except TimeoutError:
                raise simulation_timeout(CLASSICAL, timeout) from None
            return Executed(counts, job.prepared, seconds, "fallback", reason,
                            charged_backend=None, estimate_usd=0.0, answered_by=CLASSICAL)
        spec = dataclasses.replace(JobSpec.from_record(job.request), backend=target)
        started = time.monotonic()
        try:
            prepared = await prepare_fallback(runtime, spec)
        finally:
            job.fallback_prepare_s += time.monotonic() - started
        # Each fallback backend (any vendor) on its own terms: its price against the job's
        # limit and the tenant's budget, then its breaker, retries and deadline. Held while it
        # runs, as the job's own backend; not counted as a refusal (the job was counted once
        # already, or goes on to its next target).
        estimate = accounting.estimate_usd(runtime, prepared)
        job.reserved_usd = accounting.reserve(runtime, job.request, estimate, count=False)
        try:
            counts, seconds = await self.run_with_retries(job, False, prepared)
        except BaseException:
            self.release(job)
            raise
        return Executed(counts, prepared, seconds, "fallback", reason, charged_backend=target,
                        estimate_usd=estimate)

    async def charge_once(self, job: Job, executed: Executed) -> None:
        """Publish the job's cost event unless its workflow was charged already (a task run
        again after a crash between the charge and the hand-over)."""
        held = job.reserved_usd  # estimated for the loaded job (on a time-priced backend,
        # for its time; admission's estimate of the sandbox's bytes is the per-task minimum)
        self.release(job)  # the charge below counts in the tenant's spend at once
        if (self.table.get(job.workflow_id) or {}).get("charged"):
            return
        # A fallback's event names the target that answered, with its own estimate: it gave
        # the refused backend's (1.75 for an aer.ideal run of 0.00375), and a classical
        # answer named the refused backend and its shots (a red-team billing consumer).
        estimate = executed.estimate_usd
        await accounting.charge(
            self.runtime, request=job.request, prepared=executed.prepared,
            partition=job.source.partition, simulated_seconds=executed.seconds,
            estimate=(held or job.task.get("estimate_usd") or 0.0) if estimate is None
            else estimate,
            charged_backend=executed.charged_backend, answered_by=executed.answered_by,
        )
