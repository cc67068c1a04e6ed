"""Variational (hybrid) loops: a classical optimizer repeatedly asking for quantum evaluations.

Pure logic, no Kafka. `AskTellOptimizer` turns `scipy.optimize.minimize` (run in a background
thread) into an ask/tell interface, so a stream stage can evaluate each asked point as an
ordinary job and tell the value back, and resume after a crash by replaying the evaluations
it already checkpointed. `run_locally` runs the whole loop in-process
(prepare -> execute -> mitigate per evaluation).

Vocabulary: one "iteration" is one objective evaluation (one asked point), whatever the
optimizer calls an iteration internally. `max_iterations` caps evaluations.

Stop reasons: "converged" (the optimizer finished by its own criterion), "max_iterations",
"max_shots", "max_cost" (a cap would be exceeded by the next evaluation) and "stopped"
(the optimizer gave up without reporting success, e.g. scipy's own limits).
"""

from __future__ import annotations

import math
import queue
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from workers.errors import InvalidJob, JobTooLarge
from workers.jobs import JobSpec, option_reader

OPTIMIZERS = ("COBYLA", "Nelder-Mead", "Powell")
STOP_REASONS = ("converged", "max_iterations", "max_shots", "max_cost", "stopped")
# Stop reasons the stage sets itself: a cancel (the result holds the best so far, and the
# final status is `cancelled` with this detail) and a tenant's budget.
STOPPED_BY_CANCEL = "cancelled"
STOPPED_BY_DEADLINE = "deadline"
_JOIN_SECONDS = 5.0
# A variational job's checkpoint (its table entry, JSON) and its result both hold every
# evaluation: its parameters, value, standard error, shots, cost and raw value. Kept under
# this many numbers, both stay well below a Kafka record's 1 MB (about 20 bytes a number in
# the checkpoint's JSON); past it the worker could not write them (docs/security.md).
MAX_HISTORY_NUMBERS = 25_000
HISTORY_NUMBERS_PER_EVALUATION = 6  # besides the parameters
# Parameters are angles: past this a double holds them to about 1e-4 rad, and an optimizer's
# steps from them stay finite.
MAX_INITIAL_MAGNITUDE = 1e12


@dataclass(frozen=True)
class VariationalSpec:
    """How to run the classical side of a variational job."""

    optimizer: str = "COBYLA"  # a scipy.optimize.minimize method: COBYLA | Nelder-Mead | Powell
    initial_point: tuple[float, ...] = ()
    tolerance: float = 1e-3  # scipy's `tol`
    max_iterations: int = 100  # cap on objective evaluations (one iteration = one evaluation)
    max_shots: int | None = None  # cap on total shots over all evaluations
    max_cost_usd: float | None = None  # cap on total cost (USD, > 0) over all evaluations

    def checked(self) -> VariationalSpec:
        """This spec with normalised types, or InvalidJob naming the first bad option."""
        if self.optimizer not in OPTIMIZERS:
            raise InvalidJob(
                f"unknown optimizer {self.optimizer!r} (expected one of {', '.join(OPTIMIZERS)})"
            )
        point = self.initial_point
        if isinstance(point, str | bytes | Mapping) or not isinstance(point, Sequence):
            raise InvalidJob("variational initial_point must be a list of numbers")
        if not point:
            raise InvalidJob("variational initial_point is empty: give one value per parameter")
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in point):
            raise InvalidJob(f"variational initial_point must hold numbers, got {list(point)!r}")
        if not all(math.isfinite(v) for v in point):
            raise InvalidJob(f"variational initial_point must be finite, got {list(point)!r}")
        if any(abs(v) > MAX_INITIAL_MAGNITUDE for v in point):
            # Nelder-Mead's first simplex steps 5 % past each value: from 1.7e308 it reached
            # inf and the loop failed after its first, charged, evaluation (a red-team run).
            raise InvalidJob(f"variational initial_point values must be within "
                             f"±{MAX_INITIAL_MAGNITUDE:g}, got {list(point)!r}")
        tol = self.tolerance
        if isinstance(tol, bool) or not isinstance(tol, int | float) or not math.isfinite(tol):
            raise InvalidJob(f"variational tolerance must be a finite number, got {tol!r}")
        if tol <= 0:
            raise InvalidJob(f"variational tolerance must be > 0, got {tol!r}")
        _check_cap(self.max_iterations, "max_iterations", integer=True, required=True)
        history = int(self.max_iterations) * (len(point) + HISTORY_NUMBERS_PER_EVALUATION)
        if history > MAX_HISTORY_NUMBERS:
            raise JobTooLarge(
                f"variational history of up to {history} numbers (max_iterations "
                f"{int(self.max_iterations)} x ({len(point)} parameters + "
                f"{HISTORY_NUMBERS_PER_EVALUATION})) > {MAX_HISTORY_NUMBERS}: its checkpoint "
                "and result would not fit a record; lower max_iterations")
        _check_cap(self.max_shots, "max_shots", integer=True)
        _check_cap(self.max_cost_usd, "max_cost_usd", integer=False)
        return VariationalSpec(
            optimizer=self.optimizer,
            initial_point=tuple(float(v) for v in point),
            tolerance=float(tol),
            max_iterations=int(self.max_iterations),
            max_shots=None if self.max_shots is None else int(self.max_shots),
            max_cost_usd=None if self.max_cost_usd is None else float(self.max_cost_usd),
        )

    def within_job_limit(self, cost_limit_usd: Any) -> VariationalSpec:
        """This spec with the job's `cost_limit_usd` ("maximum cost of the job") as a cap on
        the loop's total, where it is below `max_cost_usd`: it was checked against each
        evaluation alone, and a loop with a $0.01 limit was charged $0.0975 for 13 (a red-team
        run). A limit of 0 stays each evaluation's (a cap is > 0)."""
        if isinstance(cost_limit_usd, bool) or not isinstance(cost_limit_usd, int | float) \
                or not math.isfinite(cost_limit_usd) or cost_limit_usd <= 0:
            return self
        if self.max_cost_usd is not None and self.max_cost_usd <= cost_limit_usd:
            return self
        return replace(self, max_cost_usd=float(cost_limit_usd))

    def to_record(self) -> dict[str, Any]:
        """The Avro field form (what `from_record` reads)."""
        return {
            "optimizer": self.optimizer,
            "initial_point": list(self.initial_point),
            "tolerance": self.tolerance,
            "max_iterations": self.max_iterations,
            "max_shots": self.max_shots,
            "max_cost_usd": self.max_cost_usd,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> VariationalSpec | None:
        """Read the Avro field; None (not a variational job) gives None. A missing or null
        option takes its default; bad values raise InvalidJob."""
        if record is None:
            return None
        if not isinstance(record, Mapping):
            raise InvalidJob("variational must be a record")
        option = option_reader(record, cls())
        point = option("initial_point")
        if isinstance(point, str | bytes | Mapping) or not isinstance(point, Sequence):
            raise InvalidJob("variational initial_point must be a list of numbers")
        return cls(
            optimizer=option("optimizer"),
            initial_point=tuple(point),
            tolerance=option("tolerance"),
            max_iterations=option("max_iterations"),
            max_shots=record.get("max_shots"),
            max_cost_usd=record.get("max_cost_usd"),
        ).checked()


def _check_cap(value: Any, name: str, *, integer: bool, required: bool = False) -> None:
    if value is None and not required:
        return
    kinds = int if integer else int | float
    if isinstance(value, bool) or not isinstance(value, kinds):
        what = "an integer" if integer else "a number"
        raise InvalidJob(f"variational {name} must be {what}, got {value!r}")
    if integer and value < 1:
        raise InvalidJob(f"variational {name} must be >= 1, got {value!r}")
    if not integer and (not math.isfinite(value) or value <= 0):
        # USD: a sub-dollar cap is ordinary (a simulator task costs a fraction of a cent).
        raise InvalidJob(f"variational {name} must be a finite amount > 0, got {value!r}")


@dataclass(frozen=True)
class Evaluation:
    """One objective evaluation: the point, its (mitigated) value and what it consumed."""

    index: int
    parameters: tuple[float, ...]
    value: float
    std_error: float
    shots: int
    cost_usd: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "parameters": list(self.parameters),
            "value": self.value,
            "std_error": self.std_error,
            "shots": self.shots,
            "cost_usd": self.cost_usd,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Evaluation:
        return cls(
            index=int(d["index"]),
            parameters=tuple(float(v) for v in d["parameters"]),
            value=float(d["value"]),
            std_error=float(d["std_error"]),
            shots=int(d["shots"]),
            cost_usd=float(d["cost_usd"]),
        )


class _Stop(Exception):
    """Raised inside the objective to end scipy's loop."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def scipy_minimize():
    """scipy.optimize.minimize, imported at first use: the import is 0.6 s of CPU that a
    worker's start-up would otherwise pay (the worker loads it in its warm-up thread)."""
    from scipy.optimize import minimize

    return minimize


class HistoryMismatch(ValueError):
    """A resumed optimizer asked for another point than its checkpoint's next evaluation."""


class AskTellOptimizer:
    """Runs scipy.optimize.minimize in a background thread and turns it into ask/tell.

    Deterministic: the sequence of asked points depends only on the spec and the told values.
    Resume: constructed with `history` (evaluations already made), it replays them: asks whose
    parameters equal (exactly, as floats) the next history entry are answered from history
    without being returned by `ask()`, so a resumed run continues where the checkpoint left
    off. A history that does not match the optimizer's path raises ValueError from `ask()`.

    Caps count the history too. Before each new evaluation: stop with "max_iterations" once
    `max_iterations` evaluations are made; with "max_shots" / "max_cost" when the next
    evaluation, estimated to cost as much as the last one, would take the total over the cap.
    The first evaluation always runs (nothing to estimate it from).

    `ask()` blocks until the optimizer thread wants a point (milliseconds); asking again
    before telling returns the same pending point. Not for use from several threads at once.
    """

    def __init__(self, spec: VariationalSpec, history: Sequence[Evaluation] = ()) -> None:
        self.spec = spec.checked()
        self._replay: deque[Evaluation] = deque(history)
        self._history: list[Evaluation] = []
        self._lock = threading.Lock()
        self._to_caller: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._to_optimizer: queue.Queue[float | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._pending: tuple[float, ...] | None = None
        self._stop_reason: str | None = None
        self._error: BaseException | None = None
        self.optimizer_error: str | None = None  # why scipy itself gave up, when it raised
        self._finished = False
        self.result: Any = None  # scipy's OptimizeResult when it returned normally

    # --- public ------------------------------------------------------------------------------
    def ask(self) -> tuple[float, ...] | None:
        """The next point to evaluate, or None when finished (see `stop_reason`)."""
        if self._error is not None:
            raise self._error
        if self._finished:
            return None
        if self._pending is not None:
            return self._pending
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="qlane-variational", daemon=True
            )
            self._thread.start()
        kind, payload = self._to_caller.get()
        if kind == "point":
            self._pending = payload
            return payload
        self._finished = True
        if kind == "error":
            self._error = payload
            raise payload
        self._stop_reason = payload
        return None

    def tell(self, evaluation: Evaluation) -> None:
        """The value of the point last asked."""
        if self._pending is None:
            raise RuntimeError("tell() without a pending ask()")
        if tuple(evaluation.parameters) != self._pending:
            raise ValueError(
                f"evaluation is for {evaluation.parameters}, the pending point is {self._pending}"
            )
        with self._lock:
            self._history.append(evaluation)
        self._pending = None
        self._to_optimizer.put(float(evaluation.value))

    @property
    def history(self) -> list[Evaluation]:
        """Every evaluation so far (replayed ones first), in order."""
        with self._lock:
            return list(self._history)

    @property
    def best(self) -> Evaluation | None:
        """The evaluation with the lowest value so far (the first of equals)."""
        history = self.history
        return min(history, key=lambda e: e.value) if history else None

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    @property
    def finished(self) -> bool:
        return self._finished

    def close(self) -> None:
        """Stop the optimizer thread (when abandoned mid-run); idempotent."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._to_optimizer.put(None)
            thread.join(_JOIN_SECONDS)
        self._finished = True
        self._pending = None

    def __enter__(self) -> AskTellOptimizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the optimizer thread ----------------------------------------------------------------
    def _run(self) -> None:
        spec = self.spec
        try:
            # scipy's own limits sit well above ours, so our caps decide.
            budget = 10 * spec.max_iterations + 100
            options: dict[str, Any] = (
                {"maxiter": budget}
                if spec.optimizer == "COBYLA"
                else {"maxiter": budget, "maxfev": budget}
            )
            result = scipy_minimize()(
                self._objective,
                np.array(spec.initial_point, dtype=float),
                method=spec.optimizer,
                tol=spec.tolerance,
                options=options,
            )
            self.result = result
            reason = "converged" if result.success else "stopped"
            self._to_caller.put(("done", reason))
        except _Stop as stop:
            self._to_caller.put(("done", stop.reason))
        except Exception as exc:
            if self.history and not isinstance(exc, HistoryMismatch):
                # scipy itself gave up (COBYLA's LinAlgError at a tolerance of 1e-300 after
                # 243 charged evaluations failed the loop with no result: a red-team run): a
                # run that ended without success, whose best so far is the loop's outcome.
                self.optimizer_error = f"{type(exc).__name__}: {exc}"[:500]
                self._to_caller.put(("done", "stopped"))
            else:  # propagated to ask()
                self._to_caller.put(("error", exc))
        except BaseException as exc:  # propagated to ask()
            self._to_caller.put(("error", exc))

    def _objective(self, x: np.ndarray) -> float:
        point = tuple(float(v) for v in np.atleast_1d(x))
        if self._replay:
            expected = self._replay[0]
            if tuple(expected.parameters) != point:
                raise HistoryMismatch(
                    f"history does not match the optimizer: evaluation {expected.index} is at "
                    f"{expected.parameters}, the optimizer asks {point}"
                )
            self._replay.popleft()
            with self._lock:
                self._history.append(expected)
            return float(expected.value)
        reason = self._cap_reason()
        if reason is not None:
            raise _Stop(reason)
        self._to_caller.put(("point", point))
        value = self._to_optimizer.get()
        if value is None:
            raise _Stop("closed")
        return value

    def _cap_reason(self) -> str | None:
        spec = self.spec
        history = self.history
        if len(history) >= spec.max_iterations:
            return "max_iterations"
        if not history:
            return None
        last = history[-1]
        if spec.max_shots is not None and sum(e.shots for e in history) + last.shots > (
            spec.max_shots
        ):
            return "max_shots"
        if spec.max_cost_usd is not None and (
            sum(e.cost_usd for e in history) + last.cost_usd > spec.max_cost_usd + 1e-12
        ):
            return "max_cost"
        return None


# --- running evaluations as jobs ---------------------------------------------------------------
EVALUATION_MARK = "#eval"


def evaluation_id(workflow_id: str, index: int) -> str:
    return f"{workflow_id}{EVALUATION_MARK}{index}"


def evaluated_workflow(evaluation: str) -> str | None:
    """The workflow id an `evaluation_id` was made from, or None for any other id."""
    workflow_id, mark, index = evaluation.rpartition(EVALUATION_MARK)
    return workflow_id if mark and workflow_id and index.isdigit() else None


def evaluation_job(base: JobSpec, parameters: tuple[float, ...], index: int) -> JobSpec:
    """The JobSpec of evaluation `index`: the ansatz bound to one parameter set, the base job's
    observables, shots, backend and mitigation, and the id "<workflow_id>#eval<index>".

    Its seed is distinct and deterministic per evaluation: `evaluation_seed`."""
    return replace(
        base,
        workflow_id=evaluation_id(base.workflow_id, index),
        parameter_sets=(tuple(float(v) for v in parameters),),
        seed=evaluation_seed(base, index),
    )


def evaluation_seed(base: JobSpec, index: int) -> int:
    """Evaluation `index`'s simulator seed: derived from the loop's own `seed` when it has
    one, so that a seed repeats a loop whatever its workflow id, as `seed_simulator` does in
    Qiskit (it was dropped, and two loops with seed 42 found -1.8147 and -1.8404; a red-team
    run); else from the evaluation's id. Never the base seed itself: every evaluation would
    share one shot-noise sequence."""
    from workers.seeds import derive_seed

    if base.seed is None:
        return derive_seed(evaluation_id(base.workflow_id, index))
    return derive_seed(f"seed:{base.seed}", index)


def evaluate(
    job: JobSpec,
    index: int,
    registry,
    cache,
    limits,
    readout_cache=None,
    prices=None,
) -> Evaluation:
    """Run one evaluation job in-process: prepare -> execute -> mitigate.

    value / std_error: the mitigated value of observable 0. shots: per-circuit shots times the
    circuits run (mitigation included). cost: `prices.actual(...)` (default PriceTable()) billed
    at zero backend seconds, i.e. the backend's per-task minimum for time-priced simulators, so
    costs (and the cost cap) are deterministic; 0.0 for a backend without a price.
    """
    from workers.cost.model import PriceTable
    from workers.errors import UnknownBackend
    from workers.execution.preparation import execute, prepare
    from workers.mitigation.combine import mitigate
    from workers.seeds import job_seed

    prepared = prepare(job, registry, cache, limits, readout_cache)
    counts = execute(
        prepared, registry, job_seed(job.workflow_id, job.seed), limits.max_simulation_seconds
    )
    outcome = mitigate(prepared, counts)
    estimate = next(e for e in outcome.estimates if e.observable_index == 0)
    shots = prepared.shots * len(prepared.tasks)
    try:
        cost = (prices or PriceTable()).actual(prepared.backend, len(prepared.tasks), shots, 0.0)
    except UnknownBackend:
        cost = 0.0
    return Evaluation(
        index=index,
        parameters=tuple(float(v) for v in job.parameter_sets[0]),
        value=float(estimate.value),
        std_error=float(estimate.std_error),
        shots=shots,
        cost_usd=cost,
    )


def run_locally(
    base: JobSpec,
    spec: VariationalSpec,
    registry,
    cache,
    limits,
    readout_cache=None,
    history: Sequence[Evaluation] = (),
    prices=None,
) -> tuple[AskTellOptimizer, list[Evaluation]]:
    """The whole loop in-process. Returns the (finished) optimizer and the NEW evaluations
    made by this call (the optimizer's `history` holds the replayed ones too)."""
    if not base.observables:
        raise InvalidJob("a variational job needs an observable to minimise")
    optimizer = AskTellOptimizer(spec, history)
    made: list[Evaluation] = []
    try:
        while (point := optimizer.ask()) is not None:
            index = len(optimizer.history)
            evaluation = evaluate(
                evaluation_job(base, point, index),
                index,
                registry,
                cache,
                limits,
                readout_cache,
                prices,
            )
            optimizer.tell(evaluation)
            made.append(evaluation)
    finally:
        optimizer.close()
    return optimizer, made
