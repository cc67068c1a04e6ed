"""Run many prepared jobs together: one backend call per backend, same counts as alone.

The execute stage collects jobs for a short window and hands them to `execute_batch`. Jobs are
grouped by backend; each group's circuits (every task of every job: its template and its
parameter values, bound first for a backend that does not bind them itself) go to ONE
`Backend.run` call with one seed and one shot count per circuit. A job's circuits get the seeds
`preparation.execute` gives them alone (seed + 2113*k for its k-th task, `circuit_seeds`), and
`Backend.run` guarantees that a circuit's counts depend only on the circuit, its shots and its
seed, so every job's counts are identical to `preparation.execute(prepared, registry, seed)`.
How many Aer calls that takes is the backend's business (see workers/backends/aer.py: all circuits
whose measurements are final and that are small share one call; others need their own).

Failures stay with their job: a job whose circuits cannot be bound gets its exception and is
left out; if the group call fails with a permanent error, the group's jobs are run one by one
so only the job at fault gets the error. A retryable failure of the group call (the backend is
down, or a fault was injected) is not attributable to a job: every job of the group gets it,
and the caller retries or falls back. With a `BreakerBoard`, a group whose breaker refuses gets
`BreakerOpen` without a call, and retryable failures and successes are recorded on it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from qiskit import QuantumCircuit
from qiskit.circuit import Parameter

from workers.backends.aer import circuit_seeds
from workers.errors import QlaneError
from workers.execution.breaker import BreakerBoard, BreakerOpen
from workers.execution.preparation import (
    PreparedJob,
    backend_circuits,
    bind_tasks,
    binding_error,
    check_simulation,
    run_circuits,
    simulation_estimate,
)

Outcome = list[dict[str, int]] | Exception


def execute_batch(
    items: Sequence[tuple[PreparedJob, int]],
    registry: Any,
    *,
    breakers: BreakerBoard | None = None,
    max_simulation_seconds: float | None = None,
) -> list[Outcome]:
    """Counts per task for each (prepared job, seed), in order, or the exception of that job.

    Never raises for a job's failure: the exception takes that job's slot. A job whose
    simulation is estimated above `max_simulation_seconds` gets JobTooLarge and is not run.
    """
    return timed_batch(items, registry, breakers=breakers,
                       max_simulation_seconds=max_simulation_seconds)[0]


def timed_batch(
    items: Sequence[tuple[PreparedJob, int]],
    registry: Any,
    *,
    breakers: BreakerBoard | None = None,
    max_simulation_seconds: float | None = None,
) -> tuple[list[Outcome], list[float]]:
    """`execute_batch`, and the backend seconds each job is billed: each backend's call is
    timed on its own and shared among its jobs by `split_by_work` (the whole call's seconds
    shared by estimates billed a Braket job, which has none, 0 s and a Bell job on Aer
    beside it 19 s; a red-team run)."""
    outcomes: list[Outcome | None] = [None] * len(items)
    seconds = [0.0] * len(items)
    groups: dict[str, list[int]] = {}
    for index, (prepared, _) in enumerate(items):
        groups.setdefault(prepared.backend, []).append(index)
    for name, indices in groups.items():
        started = time.perf_counter()
        estimates: dict = {}  # the group's simulation estimates, for its limit and its bill
        backend = _run_group(name, indices, items, registry, breakers, outcomes,
                             max_simulation_seconds, estimates)
        shares = split_by_work(time.perf_counter() - started,
                               [items[i][0] for i in indices], backend, estimates)
        for index, share in zip(indices, shares, strict=True):
            seconds[index] = share
    return outcomes, seconds  # type: ignore[return-value]


def split_by_work(seconds: float, jobs: Sequence[PreparedJob], backend: Any,
                  estimates: dict | None = None) -> list[float]:
    """One backend's call seconds shared out over its jobs by each one's estimated simulation
    (`simulation_estimate`): what each job is billed when one call ran them all. By circuits
    x shots, a 1-shot 23-qubit job's 12 s were billed to another tenant's 100,000-shot Bell
    job in its batch (a red-team run). For a backend without an estimate, by circuits x
    shots (or none: `backend` None). Jobs of one backend only: estimates of one backend and
    circuits x shots of another do not compare. `estimates`: the per-template estimates
    made for the call already."""
    if not jobs:
        return []
    work = [simulation_estimate(job, backend, estimates) for job in jobs]
    if sum(work) <= 0:
        work = [len(job.tasks) * job.shots for job in jobs]
    total = sum(work)
    if total <= 0:
        return [seconds / len(jobs)] * len(jobs)
    return [seconds * w / total for w in work]


def _run_group(
    name: str,
    indices: list[int],
    items: Sequence[tuple[PreparedJob, int]],
    registry: Any,
    breakers: BreakerBoard | None,
    outcomes: list[Outcome | None],
    max_simulation_seconds: float | None,
    estimates: dict,
) -> Any:
    """Run one backend's jobs; the backend, or None when it is not one here."""
    try:
        backend = registry.get(name)
    except Exception as exc:
        for i in indices:
            outcomes[i] = exc
        return None
    breaker = breakers.for_backend(name) if breakers is not None else None

    runs: list[JobRuns] = []
    for i in indices:
        prepared, seed = items[i]
        try:
            check_simulation(prepared, backend, max_simulation_seconds, estimates)
            templates, bindings = backend_circuits(prepared, backend)
            seeds = circuit_seeds(seed, len(templates))
        except Exception as exc:
            outcomes[i] = exc
            continue
        runs.append(JobRuns(i, templates, bindings, [prepared.shots] * len(templates), seeds))
    if not runs:
        return backend

    if breaker is not None and not breaker.allow():
        refused = BreakerOpen(name, breaker.retry_after_s())
        for job in runs:
            outcomes[job.index] = refused
        return backend
    _call(backend, runs, items, breaker, outcomes)
    return backend


def _call(
    backend: Any,
    runs: list[JobRuns],
    items: Sequence[tuple[PreparedJob, int]],
    breaker: Any,
    outcomes: list[Outcome | None],
) -> None:
    """One call for `runs`; if it fails for good, the jobs at fault get the error: jobs whose
    values cannot be bound are found by binding them (a backend that binds fails the whole
    call on one such job) and the rest run again together, else each job runs alone."""
    try:
        counts = _run(backend, runs)
    except Exception as exc:
        if _retryable(exc):
            if breaker is not None:
                breaker.record_failure()
            for job in runs:
                outcomes[job.index] = exc
            return
        unbindable = {
            job.index: error
            for job in runs
            if any(b is not None for b in job.bindings)
            and (error := binding_error(items[job.index][0])) is not None
        }
        if unbindable:
            for i, error in unbindable.items():
                outcomes[i] = error
            rest = [job for job in runs if job.index not in unbindable]
            if rest:
                _call(backend, rest, items, breaker, outcomes)
            return
        if len(runs) == 1:
            outcomes[runs[0].index] = exc
            return
        _run_one_by_one(backend, runs, breaker, outcomes)
        return
    if breaker is not None:
        breaker.record_success()
    start = 0
    for job in runs:
        outcomes[job.index] = counts[start : start + len(job.templates)]
        start += len(job.templates)


@dataclass(frozen=True)
class JobRuns:
    """One job's circuits in a group call: templates, their bindings, shots and seeds."""

    index: int
    templates: list[QuantumCircuit]
    bindings: list[dict[Parameter, float] | None]
    shots: list[int]
    seeds: list[int]


def _run(backend, runs: Sequence[JobRuns]) -> list[dict[str, int]]:
    """One backend call for every circuit of `runs`."""
    return run_circuits(
        backend,
        [c for job in runs for c in job.templates],
        [s for job in runs for s in job.shots],
        [s for job in runs for s in job.seeds],
        [b for job in runs for b in job.bindings],
    )


def _run_one_by_one(backend, runs: Sequence[JobRuns], breaker, outcomes) -> None:
    """Isolate the job(s) that made the group call fail."""
    for job in runs:
        i = job.index
        if breaker is not None and not breaker.allow():
            outcomes[i] = BreakerOpen(backend.name, breaker.retry_after_s())
            continue
        try:
            outcomes[i] = _run(backend, [job])
        except Exception as exc:
            outcomes[i] = exc
            if breaker is not None and _retryable(exc):
                breaker.record_failure()
            continue
        if breaker is not None:
            breaker.record_success()


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, QlaneError) and exc.retryable


# --- throughput measurement: python -m workers.execution.batching ---
GHZ5_QASM = (
    'OPENQASM 2.0; include "qelib1.inc"; qreg q[5]; '
    "h q[0]; cx q[0],q[1]; cx q[1],q[2]; cx q[2],q[3]; cx q[3],q[4];"
)
ESTIMATOR2_QASM = (
    'OPENQASM 2.0; include "qelib1.inc"; qreg q[2]; ry(0.3) q[0]; cx q[0],q[1]; rx(0.7) q[1];'
)


def _bench(argv: Sequence[str] | None = None) -> None:
    import argparse
    import time

    from qiskit_aer import AerSimulator

    from workers.backends.aer import BackendRegistry
    from workers.circuits.transpile import TranspileCache
    from workers.execution.preparation import execute, prepare
    from workers.jobs import JobSpec, parse_observable
    from workers.limits import Limits
    from workers.seeds import derive_seed

    parser = argparse.ArgumentParser(description="jobs/s: one by one vs execute_batch")
    parser.add_argument("--jobs", type=int, default=128)
    parser.add_argument("--shots", type=int, default=1000)
    parser.add_argument("--backend", default="aer.noisy")
    parser.add_argument("--batches", default="16,32,64")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    registry, cache, limits = BackendRegistry(), TranspileCache(), Limits()
    kinds = {
        "GHZ-5 counts": dict(circuit=GHZ5_QASM),
        "2-qubit estimator (ZZ+XX, 2 circuits)": dict(
            circuit=ESTIMATOR2_QASM, observables=(parse_observable("ZZ:0.5+XX"),)
        ),
    }
    backend = registry.get(args.backend)
    for kind, spec in kinds.items():
        items = [
            (
                prepare(
                    JobSpec(f"bench-{i}", shots=args.shots, backend=args.backend, **spec),
                    registry,
                    cache,
                    limits,
                ),
                derive_seed(f"bench-{i}"),
            )
            for i in range(args.jobs)
        ]
        execute(items[0][0], registry, items[0][1])  # warm-up: noise model conversion

        def previous(items=items):  # the Backend.run before per-circuit seeds: Aer, full model
            simulator, model = AerSimulator(), backend.noise_model
            for job, seed in items:
                options = {"noise_model": model} if model is not None else {}
                simulator.run(
                    bind_tasks(job), shots=job.shots, seed_simulator=seed, **options
                ).result()

        modes = {"one by one, previous Backend.run (Aer sampling, full model)": previous}
        modes["one by one, preparation.execute"] = lambda items=items: [
            execute(job, registry, seed) for job, seed in items
        ]
        for size in (int(s) for s in args.batches.split(",")):
            modes[f"execute_batch, {size} jobs per batch"] = lambda items=items, size=size: [
                execute_batch(items[k : k + size], registry) for k in range(0, len(items), size)
            ]
        print(f"\n{kind}: {args.jobs} jobs x {args.shots} shots on {args.backend}")
        for label, mode in modes.items():
            rates = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                mode()
                rates.append(args.jobs / (time.perf_counter() - start))
            print(f"  {label:62s} {min(rates):7.1f} - {max(rates):7.1f} jobs/s")


if __name__ == "__main__":
    _bench()
