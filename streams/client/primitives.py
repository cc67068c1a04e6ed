"""Qiskit primitives V2 whose `run()` submits through Kafka: `Sampler` and `Estimator`.

A script written against `qiskit.primitives.StatevectorSampler`/`StatevectorEstimator` runs
on qlane with only the constructor changed:

    from streams.client import Estimator
    estimator = Estimator("127.0.0.1:9092", backend="aer.noisy")
    result = estimator.run([(circuit, observables, parameter_values)]).result()
    result[0].data.evs, result[0].data.stds

How a call maps onto qlane (details in the README, "Use it from Qiskit"):

* PUBs are coerced and validated on the client with Qiskit's own `SamplerPub.coerce` /
  `EstimatorPub.coerce`, so bad input raises `ValueError` before anything is sent.
* Each PUB becomes one workflow (one JobRequest): the circuit as OpenQASM 3 with its
  parameters renamed `p00000, p00001, ...` in the circuit's parameter order (so the worker's
  sorted order is the circuit's), every parameter set of the PUB's BindingsArray (flattened),
  and, for the estimator, every observable of its ObservablesArray (flattened); the result
  is rebuilt in the broadcast shape. Mixed shots or precisions across PUBs are separate
  workflows with their own shots. An Estimator PUB pairing parameter sets with observables
  is split into a workflow per group of sets that read the same observables, when that
  measures fewer circuits (streams/client/pub_split.py).
* Workflow ids are `{job_id}.{pub index}` (`-p{part}` after it for a split PUB), the job id
  starting `<tenant>.` for a tenant (added when missing: a tenant's ids are its own);
  `run(..., job_id=...)` makes a call idempotent:
  submitting the same PUBs with the same job id again returns the first answer (the worker
  acknowledges the duplicate, the client reads the stored result) and nothing runs twice.
* Estimator precision keeps Qiskit's meaning: shots = ceil(1/precision^2) per measured
  circuit (each parameter set x measurement basis). `adaptive=True` instead treats the
  precision as the target standard error of each expectation value and allocates shots per
  measurement group from measured variances (streams/client/adaptive.py).
* The sampler's joint counts over every classical register (JobResult v4 carries the
  register layout) become one BitArray per register with the rows in a random order seeded
  by the simulator's seed (a `seed` option repeats the arrays, as Qiskit's seeded samplers do),
  so correlations between registers survive (`join_data`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import copy
import functools
import math
import numbers
import sys
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
from qiskit.primitives import BaseEstimatorV2, BaseSamplerV2
from qiskit.primitives.base.base_primitive_job import BasePrimitiveJob
from qiskit.primitives.containers import (
    PrimitiveResult,
    PubResult,
)
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.primitives.containers.sampler_pub import SamplerPub
from qiskit.providers import JobStatus

from streams.client.circuit_export import (
    active_qubits,
    circuit_source,
    compact_circuit,
    compact_observable,
)
from streams.client.commands import cancel_workflow
from streams.client.errors import BrokerTimeout, JobCancelled, ResultTimeout, remote_error
from streams.client.kafka import Client, Outcome, encoded_request, job_request
from streams.client.pub_results import (
    empty_estimator_result,
    empty_sampler_result,
    estimator_pub_result,
    sampler_pub_result,
    shots_repeated,
)
from streams.client.pub_split import Split, merged_result, split_pub
from streams.client.timeouts import Deadline, bounded, delivered, open_client
from streams.kafka.tenants import tenant_ids
from streams.kafka.topics import job_topic, lane_for_priority
from streams.settings import Settings
from workers.errors import CorruptRecord

DEFAULT_SHOTS = 1024
DEFAULT_PRECISION = 0.015625  # Qiskit's: 1/sqrt(4096)
MAX_AVRO_INT = 2**31 - 1  # a JobRequest's `shots`
PAULI_LETTERS = frozenset("IXYZ")
RUNNING_STATES = frozenset({"executing", "retrying", "fallback"})
QUEUED_STATES = frozenset({"accepted", "prepared", "duplicate"})


@dataclass(slots=True)
class Options:
    """What every workflow of a primitive's calls asks for (JobRequest fields), and the
    defaults of run(). Slotted: a misspelt option (`options.default_shot = 37`) raises
    AttributeError instead of being ignored (a red-team run)."""

    backend: str = "aer.ideal"
    mitigation: dict | None = None  # JobRequest.mitigation, e.g. {"readout": True}
    tenant: str | None = None  # submit to {prefix}.jobs.{tenant}[-{lane}]
    priority: int = 0  # > 0 the high lane, < 0 the low lane
    deadline_s: float | None = None  # latency budget from submission
    cost_limit_usd: float | None = None
    fallback: list[str] = field(default_factory=list)  # e.g. ["classical"]
    seed: int | None = None  # simulator seed; None derives it from the workflow id
    timeout_s: float = 600.0  # how long result() waits for the workflows
    metadata: dict[str, str] = field(default_factory=dict)
    # run()'s defaults, as `options.default_shots` of Qiskit's BackendSamplerV2 and IBM's
    # primitives: the Sampler's shots per PUB; the Estimator's precision, which a
    # default_shots given overrides (precision 1/sqrt(shots)), as on IBM's Estimator.
    default_shots: int | None = None
    default_precision: float = DEFAULT_PRECISION

    @property
    def seed_simulator(self) -> int | None:
        """`seed`, by the name BackendSamplerV2's options give it."""
        return self.seed

    @seed_simulator.setter
    def seed_simulator(self, value: int | None) -> None:
        self.seed = value

    def request_fields(self) -> dict:
        fields = {
            "backend": self.backend,
            "priority": int(self.priority),
            "fallback": list(self.fallback),
            "metadata": {"qlane.client": "primitives", **self.metadata},
        }
        if self.mitigation is not None:
            fields["mitigation"] = dict(self.mitigation)
        if self.tenant is not None:
            fields["tenant"] = self.tenant
        if self.deadline_s is not None:
            fields["deadline_ms"] = int(self.deadline_s * 1000)
        if self.cost_limit_usd is not None:
            fields["cost_limit_usd"] = float(self.cost_limit_usd)
        if self.seed is not None:
            from workers.jobs import seed_out_of_range

            if (problem := seed_out_of_range(int(self.seed))) is not None:
                raise ValueError(problem)  # the workers refuse it (InvalidJob)
            fields["seed"] = int(self.seed)
        return fields


def checked_default_shots(options: Options) -> int | None:
    """`options.default_shots` as an int, or ValueError unless it is None or a positive
    integer (a NumPy one too) that a JobRequest's `shots` (an Avro int) can hold: 0 was
    taken for "not set", -1 accepted (the Estimator then failed in math.sqrt), and 10**12
    failed at run() as a CorruptRecord."""
    shots = options.default_shots
    if shots is None:
        return None
    if isinstance(shots, bool) or not isinstance(shots, numbers.Integral) \
            or not 1 <= shots <= MAX_AVRO_INT:
        raise ValueError(f"default_shots must be a positive integer up to {MAX_AVRO_INT}, "
                         f"got {shots!r}")
    return int(shots)


def make_options(options: Options | dict | None, keywords: dict) -> Options:
    """The primitive's Options: `options` (an Options, or a dict of its fields, as
    BackendSamplerV2 takes them), else the Options fields among `keywords` (taken out of
    them); `seed_simulator` is `seed`. TypeError names a field Options does not have."""
    names = {*Options.__dataclass_fields__, "seed_simulator"}
    given = {k: keywords.pop(k) for k in list(keywords) if k in names}
    if isinstance(options, Options):
        chosen = options
    elif options is None or isinstance(options, dict):
        chosen = Options()
        given = {**(options or {}), **given}
    else:
        raise TypeError(f"options must be an Options or a dict, not {type(options).__name__}")
    for name, value in given.items():
        if name not in names:
            raise TypeError(f"unknown option {name!r}; options are: "
                            f"{', '.join(sorted(names))}")
        setattr(chosen, name, value)
    checked_default_shots(chosen)
    return chosen


def make_settings(broker: str | None, settings: Settings | None, kafka: dict) -> Settings:
    """Settings from an explicit object, else QLANE_* variables; broker and any Settings field
    given as a keyword (security_protocol, sasl_username, topic_prefix, ...) override. A
    keyword that is no Settings field is a TypeError, as for any function: `Sampler(shots=37)`
    and `Sampler(default_shot=37)` were ignored (a red-team run)."""
    if unknown := sorted(set(kafka) - set(Settings.model_fields)):
        raise TypeError(f"unexpected keyword argument {unknown[0]!r} (neither a primitive's "
                        "option nor a Settings field)")
    base = settings if settings is not None else Settings()
    overrides = dict(kafka)
    if broker is not None:
        overrides["broker"] = broker
    if not overrides:
        return base
    values = base.model_dump()
    if "broker" in overrides and settings is None and "profile" not in overrides:
        values["profile"] = None  # resolve the profile for the broker given
    return Settings(**{**values, **overrides})


def flat_parameter_sets(values: np.ndarray) -> list[list[float]]:
    """The BindingsArray's values (shape + (num_parameters,)) as a list of parameter sets."""
    if values.shape[-1] == 0:
        return []
    return values.reshape(-1, values.shape[-1]).astype(float).tolist()


def index_grid(shape: tuple[int, ...], broadcast: tuple[int, ...]) -> np.ndarray:
    """For each index of the broadcast shape, the flat index into an array of `shape`."""
    return np.broadcast_to(np.arange(math.prod(shape)).reshape(shape), broadcast)


def pauli_observable(mapping: dict) -> dict:
    terms = []
    for label, coeff in mapping.items():
        if not set(label) <= PAULI_LETTERS:
            raise ValueError(
                f"observable term {label!r}: qlane estimates Pauli observables only "
                "(no projectors 0, 1, +, -, r, l)"
            )
        terms.append({"pauli": label, "coeff": float(np.real(coeff))})
    return {"terms": terms}


# --- the job ---------------------------------------------------------------------------
class Session:
    """One job's connection: submits workflows and waits for their outcomes."""

    def __init__(self, job: QlaneJob, client: Client) -> None:
        self.job = job
        self.client = client

    async def run(self, requests: list[dict],
                  convert: Callable[[int, dict], object] | None = None,
                  keys: list[int] | None = None) -> list[dict]:
        """Submit the requests and return their JobResults, in order; raises the typed error
        of the first that has none. The others that succeeded ran and were charged: they
        ride on that error as `pub_results` (`keys[i]`, else i, -> `convert(i, JobResult)`,
        else the JobResult, for request i), else they could not be had at all (a red-team
        run: two of three pubs charged, no value returned, and the same on resubmission)."""
        if self.job._cancel_requested:
            raise JobCancelled(f"job {self.job.job_id()} was cancelled")
        ids = [r["workflow_id"] for r in requests]
        timeout_s = self.job._timeout_s
        deadline = self.job._deadline
        sent, unsent = await self._submit(requests)
        if unsent is not None:
            # Told at exit unless result() hears it: the exit stops waiting once the job is
            # submitted, before the job ends, and a script ending right after run() said
            # nothing of two pubs that ran and were charged (a red-team run).
            self.job._send_error = unsent
            _ENDED_UNSENT.add(self.job)
        self.job._submitted.set()
        _UNSUBMITTED.discard(self.job)
        if self.job._cancel_requested:  # cancel() ran while these were being sent
            try:
                await self._cancel_sent(sent)
            except Exception:
                if unsent is None:
                    raise
        outcomes = await self.client.wait(sent, deadline.left(), self.job._on_event) if sent else {}
        if unsent is not None:
            ids = sent  # the error stands for the pubs it left unsent
        for workflow_id in ids[len(sent):]:  # left unsent by a cancel
            self.job._states[workflow_id] = "cancelled"
            outcomes[workflow_id] = Outcome(workflow_id, "cancelled",
                                            detail="never sent: the job was cancelled first")
        results: list[dict] = []
        failure: BaseException | None = None
        completed: dict[int, object] = {}
        for index, workflow_id in enumerate(ids):
            outcome: Outcome = outcomes[workflow_id]
            self.job._states[workflow_id] = outcome.state
            if outcome.result is not None and outcome.result.get("status") == "succeeded":
                results.append(outcome.result)
                completed[index if keys is None else keys[index]] = (
                    outcome.result if convert is None else convert(index, outcome.result))
            elif failure is None:
                failure = outcome_error(workflow_id, outcome, timeout_s)
        if unsent is not None:
            failure = unsent
        if failure is not None:
            failure.pub_results = completed
            raise failure
        return results


    async def _cancel_sent(self, sent: list[str]) -> None:
        """Cancel the workflows sent, and one whose send timed out (it may have reached the
        broker), within what is left of the job's time or a short grace once it is spent: a
        full timeout each held result() to twice timeout_s (a red-team run)."""
        reason = f"job {self.job.job_id()} cancelled"
        deadline = Deadline(max(self.job._deadline.left(), CANCEL_GRACE_S))
        what = f"cancelling job {self.job.job_id()}"
        await asyncio.gather(*(  # each within the deadline
            delivered(functools.partial(self.client.cancel, workflow_id,
                                        self.job._options.tenant, reason=reason),
                      deadline, what)
            for workflow_id in sent + self.job._in_doubt))

    async def _submit(self, requests: list[dict]) -> tuple[list[str], BaseException | None]:
        """Send the requests in order, within the job's deadline: the ids sent, and the error
        that stopped the sending after some were sent (raised when none was). Stops at a
        cancel: a pub sent after cancel() ran and was charged, its job CANCELLED (a red-team
        run)."""
        submitting = self.job._deadline
        sent: list[str] = []
        for request in requests:
            if self.job._cancel_requested:
                break
            self.job._states.setdefault(request["workflow_id"], "submitted")
            topic = self.job._topic(request)
            what = f"submitting {request['workflow_id']} to {topic}"
            try:
                # Sent again while the cluster cannot take it (a leader lost, a broker frozen
                # mid-send): aiokafka's own errors came out of result() (red-team runs).
                await delivered(functools.partial(self.client.submit, request, topic),
                                submitting, what)
            except Exception as error:  # noqa: BLE001 - the caller raises it, with what ran
                self.job._states.pop(request["workflow_id"], None)
                if isinstance(error, BrokerTimeout):
                    # Given up on, its record may still reach the broker and run: a frozen
                    # broker wrote it when it resumed, and it ran and was charged uncounted
                    # (a red-team run).
                    self.job._in_doubt = [request["workflow_id"]]
                    error = BrokerTimeout(
                        f"{error} ({request['workflow_id']} may have reached the broker all "
                        "the same, and then runs and is charged: the same job_id sent again "
                        "is safe)")
                if not sent:  # nothing surely sent: the job was not submitted
                    if self.job._in_doubt and self.job._cancel_requested:
                        # the first pub in doubt: it ran, charged, uncancelled (a red-team run)
                        with contextlib.suppress(Exception):
                            await self._cancel_sent([])
                    raise error from None
                # The pubs sent before ran and were charged: their results ride on the
                # error (they were dropped, and the job was told as never submitted).
                self.job._sent_in_part = (len(sent), len(requests))
                return sent, error
            sent.append(request["workflow_id"])
        return sent, None


ENDED_STATES = frozenset({"done", "failed", "rejected", "cancelled"})

# Jobs whose workflows are not all on the broker yet, and jobs that ended unsent.
_UNSUBMITTED: weakref.WeakSet = weakref.WeakSet()
_ENDED_UNSENT: weakref.WeakSet = weakref.WeakSet()


# How long the interpreter's exit waits for submissions: a reachable broker takes a job in
# well under a second; an unreachable one would hold the exit for twice `timeout_s` (20
# minutes by default), where Ctrl-C is not heard (a red-team run).
EXIT_SUBMIT_WAIT_S = 15.0


def _submit_before_exit() -> None:
    """At interpreter exit, wait for the jobs still being submitted, for EXIT_SUBMIT_WAIT_S
    at most, and say on stderr which were not sent and why: their threads are daemons, and a
    script that ended right after `run()` never sent its job, with nothing said (red-team
    runs). Registered with threading's own exit hooks, which run before the executors that
    name resolution needs are shut down (`atexit` runs after)."""
    waited_until = time.monotonic() + EXIT_SUBMIT_WAIT_S
    for job in list(_UNSUBMITTED):
        job._submitted.wait(max(waited_until - time.monotonic(), 0.0))
    for job in list(_UNSUBMITTED):
        sys.stderr.write(f"qlane: job {job.job_id()} was not submitted before the program "
                         f"ended (still connecting after {EXIT_SUBMIT_WAIT_S:g}s)\n")
        _UNSUBMITTED.discard(job)
    for job in list(_ENDED_UNSENT):
        if job._sent_in_part:
            sent, pubs = job._sent_in_part
            told = f"was sent in part ({sent} of {pubs} pubs, which run and are charged)"
            if job._in_doubt:
                told += f", and {job._in_doubt[0]} may have gone too"
        else:
            told = "was not submitted"
        error = job._error if job._error is not None else job._send_error
        sys.stderr.write(f"qlane: job {job.job_id()} {told}: {error!r}\n")
        _ENDED_UNSENT.discard(job)


# Run twice: with threading's exit hooks, before the executors close, and with `atexit`,
# after the program's other threads have ended, for a job one of them started meanwhile
# (it was lost with nothing said: a red-team run).
if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_submit_before_exit)
atexit.register(_submit_before_exit)
CANCEL_ANSWER_WAIT_S = 30.0  # at least, for the workers' answers to a timed-out job's cancel
CANCEL_POLL_S = 0.1  # how soon a job still connecting notices its cancel()
CANCEL_GRACE_S = 2.0  # for the cancels of a job cancelled while it sent, once its time is spent


def answered_state(answer) -> str:
    """A workflow's state from the worker's answer to its cancel (CancelAnswer)."""
    if answer.state == "cancelled":
        return "cancelled"
    finished = answer.detail.removeprefix("already ").split(":")[0].strip()
    if answer.state in ("cancel_ignored", "done", "failed") and finished in (
            "done", "failed", "cancelled", "executed"):
        return "done" if finished == "executed" else finished
    return "executing" if "executing" in answer.detail else "submitted"


def outcome_error(workflow_id: str, outcome: Outcome, timeout_s: float) -> BaseException:
    """The typed error for a workflow that gave no result."""
    if outcome.state == "cancelled":
        return JobCancelled(f"workflow {workflow_id} was cancelled: {outcome.detail}")
    if outcome.result is not None:
        return remote_error(outcome.result.get("error") or "")
    if outcome.state in ("failed", "rejected"):
        return remote_error(outcome.detail)
    if outcome.state == "duplicate":
        return ResultTimeout(
            f"workflow {workflow_id} ran at an earlier submission ({outcome.detail}), "
            "and its result was not found on the results topics")
    return ResultTimeout(
        f"workflow {workflow_id}: no outcome within {timeout_s:.0f}s "
        f"(last state {outcome.state}, seen {outcome.history})")


class QlaneJob(BasePrimitiveJob[PrimitiveResult, JobStatus]):
    """A primitive job: its workflows travel through Kafka; `result()` blocks for them."""

    def __init__(self, job_id: str, settings: Settings, options: Options, plan) -> None:
        """Starts the job in a thread of its own. Its submission is waited for when the
        interpreter exits (`_submit_before_exit`): a job whose script ended right after
        `run()` was never sent, with nothing said (a red-team run). The options are the
        primitive's as they were at `run()`: a tenant set afterwards sent an earlier job of
        another tenant to the shared topics, where it ran and was charged (a red-team run)."""
        super().__init__(job_id)
        self._settings = settings
        self._options = copy.deepcopy(options)
        self._plan = plan  # async (Session) -> PrimitiveResult
        self._timeout_s = options.timeout_s
        # Connecting, sending and waiting for the outcomes share it: each with a timeout of
        # its own, a ResultTimeout "within 8s" came 16.4 s after run() while a node's
        # partitions moved to other leaders (a red-team run).
        self._deadline = Deadline(options.timeout_s)
        self._states: dict[str, str] = {}
        self._cancel_requested = False
        self._result: PrimitiveResult | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._submitted = threading.Event()
        self._sent_in_part: tuple[int, int] | None = None  # (pubs sent, pubs) when it failed
        self._in_doubt: list[str] = []  # a workflow whose send timed out: it may have gone
        self._send_error: BaseException | None = None  # what stopped a submission in part
        self._thread = threading.Thread(target=self._main, name=f"qlane-job-{job_id}",
                                        daemon=True)
        _UNSUBMITTED.add(self)
        self._thread.start()

    def _topic(self, request: dict) -> str:
        lane = lane_for_priority(request.get("priority") or 0)
        return job_topic(self._settings.topic_prefix, self._options.tenant, lane)

    def _on_event(self, outcome: Outcome, event: str) -> None:
        if outcome.history:
            self._states[outcome.workflow_id] = outcome.history[-1]
        if outcome.finished:
            self._states[outcome.workflow_id] = outcome.state

    def _main(self) -> None:
        async def drive():
            async with open_client(self._settings, self._options.tenant, self._deadline,
                                   watch=True) as client:
                return await self._plan(Session(self, client))

        async def drive_until_cancelled():
            # A cancel() while the job connects ends it there: nothing is sent (the states
            # fill as a send starts). It stayed QUEUED until the connection gave up, at
            # timeout_s, or for good with timeout_s=inf (a red-team run).
            work = asyncio.ensure_future(drive())
            while True:
                await asyncio.wait({work}, timeout=CANCEL_POLL_S)
                if work.done() or self._states:  # sending: Session handles a cancel
                    return await work
                if self._cancel_requested:
                    work.cancel()
                    with contextlib.suppress(BaseException):
                        await work
                    raise JobCancelled(f"job {self.job_id()} was cancelled before it was sent")

        try:
            self._result = asyncio.run(drive_until_cancelled())
        except BaseException as error:  # re-raised by result()
            if self._cancel_requested and not self._states and not self._in_doubt and \
                    not isinstance(error, JobCancelled):
                # Cancelled before anything was sent (while it connected): cancelled.
                error = JobCancelled(f"job {self.job_id()} was cancelled before it was "
                                     f"sent ({type(error).__name__} meanwhile)")
            self._error = error
        finally:
            if (self in _UNSUBMITTED or self._sent_in_part) and self._error is not None \
                    and not isinstance(self._error, JobCancelled):
                _ENDED_UNSENT.add(self)  # its failure is told at exit if nobody read it
            self._done.set()
            self._submitted.set()
            _UNSUBMITTED.discard(self)

    def result(self, timeout: float | None = None) -> PrimitiveResult:
        if not self._done.wait(timeout):
            raise ResultTimeout(f"job {self.job_id()} has no result after {timeout}s")
        _ENDED_UNSENT.discard(self)  # ended: its caller hears why, not the exit
        if self._gave_up_waiting() and self._all_cancelled():
            # Cancelled after its ResultTimeout: it said CANCELLED and raised the timeout.
            raise JobCancelled(f"job {self.job_id()} was cancelled after it waited out its "
                               "timeout: not run")
        if self._error is not None:
            raise self._error
        return self._result

    def _gave_up_waiting(self) -> bool:
        """Whether the job ended on the client's own timeout: its workflows may still be
        queued or running, so it is not final and can be cancelled (it reported ERROR and
        refused the cancel, and the job ran and was charged: a red-team run)."""
        return self._done.is_set() and isinstance(self._error, ResultTimeout)

    def status(self) -> JobStatus:
        if self._gave_up_waiting() and self._all_ended():
            # What the cancels' answers said: all cancelled, or ended (result() raised and
            # raises; the same pubs with the same job_id read what finished, uncharged).
            return JobStatus.CANCELLED if self._all_cancelled() else JobStatus.ERROR
        if self._done.is_set() and not self._gave_up_waiting():
            if isinstance(self._error, JobCancelled):
                return JobStatus.CANCELLED
            return JobStatus.ERROR if self._error is not None else JobStatus.DONE
        states = set(self._states.values())
        if states & RUNNING_STATES or "done" in states:
            return JobStatus.RUNNING
        return JobStatus.QUEUED

    def done(self) -> bool:
        return self.status() == JobStatus.DONE

    def running(self) -> bool:
        return self.status() == JobStatus.RUNNING

    def cancelled(self) -> bool:
        return self.status() == JobStatus.CANCELLED

    def in_final_state(self) -> bool:
        return self._done.is_set() and (not self._gave_up_waiting() or self._all_ended())

    def _all_cancelled(self) -> bool:
        return bool(self._states) and all(state == "cancelled"
                                          for state in self._states.values())

    def _all_ended(self) -> bool:
        return bool(self._states) and all(state in ENDED_STATES
                                          for state in self._states.values())

    def cancel(self) -> bool:
        """Ask the workers to cancel every unfinished workflow of the job.

        Workflows not yet executing never run and are not charged; a finished one is not
        affected. Returns False when the job had already finished. A job whose wait for its
        result timed out watches its workflows no more: its cancels wait for the workers'
        answers, which say whether any was cancelled (it returned True for a job that had
        run meanwhile and been charged: a red-team run) and become its states.
        """
        if self.in_final_state():
            return False
        self._cancel_requested = True
        pending = [wf for wf, state in self._states.items() if state not in ENDED_STATES]
        if not pending and not self._states:
            # Nothing sent yet: the job's thread sends nothing more now. A cancel that
            # connected first waited the job's whole timeout for a broker that was not there,
            # and the job ended in ERROR (a red-team run).
            return True
        reason = f"job {self.job_id()} cancelled by the client"
        answered = self._gave_up_waiting()
        # The answers may take longer than the result's timeout (a worker restarting): bounded
        # by that alone, a cancel the worker applied 12 s later was reported as not done.
        answer_wait = max(self._timeout_s, CANCEL_ANSWER_WAIT_S)

        async def send() -> list:
            if answered:
                return await asyncio.gather(*(
                    bounded(cancel_workflow(self._settings, workflow_id, self._options.tenant,
                                            reason, timeout_s=answer_wait),
                            answer_wait + self._timeout_s, f"cancelling {workflow_id}")
                    for workflow_id in pending))
            async with open_client(self._settings, None, self._timeout_s) as client:
                for workflow_id in pending:
                    await bounded(client.cancel(workflow_id, self._options.tenant, reason),
                                  self._timeout_s, f"cancelling {workflow_id}")
            return []

        # On a thread of its own: the caller may be inside a running event loop (a Jupyter
        # cell), where asyncio.run raises and the cancel was never sent.
        failures: list[BaseException] = []
        answers: list = []

        def sender() -> None:
            try:
                answers.extend(asyncio.run(send()))
            except BaseException as error:  # re-raised in the caller's thread
                failures.append(error)

        thread = threading.Thread(target=sender, name=f"qlane-cancel-{self.job_id()}",
                                  daemon=True)
        thread.start()
        thread.join()
        if failures:
            raise failures[0]
        if not answered:
            return True
        for answer in answers:
            self._states[answer.workflow_id] = answered_state(answer)
        # No answer: the cancel is on its topic and is applied when a worker reads it.
        return any(answer.state in ("cancelled", "no_answer") for answer in answers)

    def workflow_ids(self) -> list[str]:
        return list(self._states)


class _Primitive:
    def __init__(self, broker, settings, options: Options, kafka: dict) -> None:
        self._settings = make_settings(broker, settings, kafka)
        self._options = options

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def options(self) -> Options:
        return self._options

    def _requests_base(self, job_id: str, index: int) -> dict:
        return {"workflow_id": f"{job_id}.{index}", **self._options.request_fields()}

    def _in_tenant_ids(self, job_id: str) -> str:
        """A tenant's workflow ids start with `<tenant>.` (streams/kafka/tenants.py)."""
        tenant = self._options.tenant
        if tenant is None or job_id.startswith(tenant_ids(tenant)):
            return job_id
        return tenant_ids(tenant) + job_id

    def _job_id(self, job_id: str | None) -> str:
        return self._in_tenant_ids(job_id or f"qlane-{uuid.uuid4().hex[:12]}")


# --- Sampler ---------------------------------------------------------------------------
class Sampler(_Primitive, BaseSamplerV2):
    """`BaseSamplerV2` over Kafka. Constructor keywords: broker, settings (a Settings with TLS
    and SASL), default_shots, the `Options` fields, and any Settings field."""

    def __init__(self, broker: str | None = None, *, settings: Settings | None = None,
                 default_shots: int | None = None, options: Options | dict | None = None,
                 **keywords) -> None:
        if default_shots is not None:
            keywords["default_shots"] = default_shots
        super().__init__(broker, settings, make_options(options, keywords), keywords)

    @property
    def default_shots(self) -> int:
        return checked_default_shots(self._options) or DEFAULT_SHOTS

    def run(self, pubs: Iterable, *, shots: int | None = None,
            job_id: str | None = None) -> QlaneJob:
        if shots is None:
            shots = self.default_shots
        if (self._options.mitigation or {}).get("readout"):
            # The worker corrects probabilities, which the JobResult cannot carry and which
            # are no samples: the counts would come back raw, as if it had not been asked.
            raise ValueError("readout mitigation corrects probabilities and expectation "
                             "values, not samples: use the Estimator, or drop it here")
        if (self._options.mitigation or {}).get("zne") is not None:
            # The worker refused it only after the round trip, as a dead letter (a red-team run).
            raise ValueError("zero-noise extrapolation extrapolates expectation values; samples "
                             "have none: use the Estimator, or drop it here")
        coerced = [SamplerPub.coerce(pub, shots) for pub in pubs]
        if any(len(pub.circuit.cregs) == 0 for pub in coerced):
            warnings.warn(
                "One of your circuits has no output classical registers and so the result "
                "will be empty. Did you mean to add measurement instructions?",
                UserWarning, stacklevel=2,
            )
        job_id = self._job_id(job_id)
        sent = [(i, pub) for i, pub in enumerate(coerced) if not is_empty(pub)]
        requests = [self._request(job_id, i, pub) for i, pub in sent]
        check_sendable(requests, [i for i, _ in sent])

        async def plan(session: Session) -> PrimitiveResult:
            results = await session.run(
                requests, lambda k, result: sampler_pub_result(sent[k][1], result),
                [i for i, _ in sent])
            return PrimitiveResult(
                [sampler_pub_result(pub, result) for (_, pub), result in zip(sent, results,
                                                                             strict=True)],
                metadata={"version": 2},
            )

        return QlaneJob(job_id, self._settings, self._options,
                        with_empty_pubs(coerced, empty_sampler_result, plan))

    def _request(self, job_id: str, index: int, pub: SamplerPub) -> dict:
        active = active_qubits(pub.circuit)
        circuit = pub.circuit if active is None else compact_circuit(pub.circuit, active)
        source, parameters = circuit_source(circuit)
        values = pub.parameter_values.as_array(parameters)
        return job_request(**self._requests_base(job_id, index), circuit=source,
                           circuit_format="qasm3", shots=int(pub.shots) * shots_repeated(pub),
                           parameter_sets=flat_parameter_sets(values))


def check_sendable(requests: list[dict], indices: list[int],
                   notes: list[str] | None = None) -> None:
    """ValueError from run(), before anything is sent, for a pub whose JobRequest the schema
    cannot hold: shots past an Avro int (`run(shots=2**31)`, a pub's own shots, an Estimator
    precision under 2.2e-5) were refused only while sending, after the pubs before it had
    been sent and run, as a CorruptRecord from result() (a red-team run)."""
    for position, (request, index) in enumerate(zip(requests, indices, strict=True)):
        note = notes[position] if notes else ""
        if request["shots"] > MAX_AVRO_INT:
            raise ValueError(f"pub {index}: {request['shots']} shots{note} are more than a "
                             f"job can ask for ({MAX_AVRO_INT}); nothing was sent")
        try:
            encoded_request(request)
        except CorruptRecord as error:
            raise ValueError(f"pub {index} cannot be sent: {error}; nothing was sent") from None


def is_empty(pub) -> bool:
    """A pub whose shape holds no element (parameter values of shape (0, n)): Qiskit answers
    it with empty arrays. Sent, it was a job of no parameter sets, refused by the worker."""
    return math.prod(pub.shape) == 0


def with_empty_pubs(pubs: list, empty_result, plan):
    """`plan` (for the pubs that are not empty, in order) with each empty pub's result
    answered here, without a workflow, in its place."""
    async def whole(session: Session) -> PrimitiveResult:
        answered = await plan(session) if any(not is_empty(p) for p in pubs) else None
        results = iter(answered or ())
        return PrimitiveResult(
            [empty_result(pub) if is_empty(pub) else next(results) for pub in pubs],
            metadata=answered.metadata if answered is not None else {"version": 2})
    return whole


# --- Estimator -------------------------------------------------------------------------
class Estimator(_Primitive, BaseEstimatorV2):
    """`BaseEstimatorV2` over Kafka. Constructor keywords: broker, settings (a Settings with
    TLS and SASL), default_precision, adaptive (and its AdaptiveOptions), the `Options`
    fields, and any Settings field."""

    def __init__(self, broker: str | None = None, *, settings: Settings | None = None,
                 default_precision: float | None = None, adaptive: bool = False,
                 adaptive_options=None, options: Options | dict | None = None,
                 **keywords) -> None:
        if default_precision is not None:
            keywords["default_precision"] = default_precision
        super().__init__(broker, settings, make_options(options, keywords), keywords)
        if self.default_precision <= 0:
            raise ValueError("default_precision must be > 0 for a shot-based estimator")
        self._adaptive = adaptive
        self._adaptive_options = adaptive_options

    @property
    def default_precision(self) -> float:
        """`options.default_precision`, or 1/sqrt(`options.default_shots`) when given."""
        shots = checked_default_shots(self._options)
        if shots is not None:
            return 1 / math.sqrt(shots)
        return self._options.default_precision

    def run(self, pubs: Iterable, *, precision: float | None = None,
            job_id: str | None = None) -> QlaneJob:
        if precision is None:
            precision = self.default_precision
        coerced = [EstimatorPub.coerce(pub, precision) for pub in pubs]
        for pub in coerced:
            if pub.precision <= 0:
                raise ValueError(f"precision {pub.precision} must be > 0 for a shot-based "
                                 "estimator")
        job_id = self._job_id(job_id)
        sent = [(i, pub) for i, pub in enumerate(coerced) if not is_empty(pub)]
        units = EstimatorUnits([(i, pub, *self._request(job_id, i, pub)) for i, pub in sent])
        kept, prepared = units.pubs, units.prepared
        if self._adaptive:
            from streams.client.adaptive import AdaptiveOptions, adaptive_plan

            mitigation = self._options.mitigation or {}
            if mitigation.get("zne") is not None or mitigation.get("readout"):
                # Accepted, readout (and ZNE asked as {}, its defaults) gave raw values as
                # if mitigated (0.933 for a mitigated 0.9995; red-team runs).
                raise ValueError("adaptive precision works on raw counts: not with ZNE or "
                                 "readout mitigation")
            adaptive = adaptive_plan(self, kept, prepared,
                                     self._adaptive_options or AdaptiveOptions())

            async def plan(session: Session) -> PrimitiveResult:
                answered = await adaptive(session)
                return PrimitiveResult(units.assembled(list(answered)),
                                       metadata=answered.metadata)
        else:
            # Adaptive precision sends its own shots, in requests of at most the worker's
            # limit; here each pub (or part of one) is one request of ceil(1/precision^2).
            check_sendable([request for request, _ in prepared], units.pub_indices,
                           [f" (precision {pub.precision:g})" for pub in kept])

            async def plan(session: Session) -> PrimitiveResult:
                try:
                    results = await session.run(
                        [request for request, _ in prepared],
                        lambda k, result: estimator_pub_result(kept[k], prepared[k][1], result))
                except Exception as error:
                    if hasattr(error, "pub_results"):
                        error.pub_results = units.completed(error.pub_results)
                    raise
                return PrimitiveResult(
                    units.assembled([estimator_pub_result(pub, grids, result) for
                                     pub, (_, grids), result in zip(kept, prepared, results,
                                                                    strict=True)]),
                    metadata={"version": 2},
                )

        return QlaneJob(job_id, self._settings, self._options,
                        with_empty_pubs(coerced, empty_estimator_result, plan))

    def _request(self, job_id: str, index: int, pub: EstimatorPub):
        active = active_qubits(pub.circuit)
        circuit = pub.circuit if active is None else compact_circuit(pub.circuit, active)
        source, parameters = circuit_source(circuit)
        values = pub.parameter_values.as_array(parameters)
        bindings_shape = pub.parameter_values.shape
        observables = [pauli_observable(
            pub.observables[idx] if active is None else
            compact_observable(pub.observables[idx], active, pub.circuit.num_qubits))
            for idx in np.ndindex(*pub.observables.shape)]
        parameter_sets = flat_parameter_sets(values)
        if not parameter_sets and math.prod(bindings_shape) > 1:
            # No parameters, a shaped binding: one run per element, each an estimate of its
            # own shots. One run gave every element the same value, each with the error bar
            # of an independent one (50 elements: all 0.51 for 0.5403; a red-team run).
            parameter_sets = [[] for _ in range(math.prod(bindings_shape))]
        grids = (index_grid(bindings_shape, pub.shape) if parameter_sets else
                 np.zeros(pub.shape, dtype=int),
                 index_grid(pub.observables.shape, pub.shape))
        request = job_request(
            **self._requests_base(job_id, index), circuit=source, circuit_format="qasm3",
            shots=shots_for_precision(pub.precision), observables=observables,
            parameter_sets=parameter_sets,
        )
        return request, grids


class EstimatorUnits:
    """An Estimator call's pubs as the requests sent: a pub whole, or its parts
    (streams/client/pub_split.py), and the pubs' results put back together from theirs."""

    def __init__(self, pubs: list[tuple[int, EstimatorPub, dict, tuple]]) -> None:
        self.pubs: list = []  # what each request's result is rebuilt for: a pub or a part
        self.prepared: list[tuple[dict, tuple]] = []  # (request, grids)
        self.pub_indices: list[int] = []  # the run() index of each request's pub
        # per pub: its run() index, the pub, its split (None: sent whole), its requests
        self._whole: list[tuple[int, EstimatorPub, Split | None, list[int]]] = []
        for index, pub, request, grids in pubs:
            split = split_pub(pub, request, grids)
            pieces = ([(pub, request, grids)] if split is None else split.parts)
            self._whole.append((index, pub, split, list(range(len(self.pubs),
                                                              len(self.pubs) + len(pieces)))))
            for piece, piece_request, piece_grids in pieces:
                self.pubs.append(piece)
                self.prepared.append((piece_request, piece_grids))
                self.pub_indices.append(index)

    def assembled(self, results: list[PubResult]) -> list[PubResult]:
        """Each pub's result from its requests' results (in request order)."""
        return [pub_result(pub, split, [results[k] for k in at])
                for _, pub, split, at in self._whole]

    def completed(self, by_request: dict[int, PubResult]) -> dict[int, PubResult]:
        """A failed call's results by run() index, of the pubs all of whose requests
        succeeded (they ran and were charged)."""
        return {index: pub_result(pub, split, [by_request[k] for k in at])
                for index, pub, split, at in self._whole if all(k in by_request for k in at)}


def pub_result(pub: EstimatorPub, split: Split | None, results: list[PubResult]) -> PubResult:
    """A pub's result from its requests' results: its one request's, or its parts' merged."""
    return results[0] if split is None else merged_result(pub, split, results)


def shots_for_precision(precision: float) -> int:
    """Qiskit's shots for a precision, ceil(1/precision^2), with 1/sqrt(n) giving n: its
    rounding error made `default_shots=1000` run 1,001 shots (29,769 of 1..100,000 ran one
    more; a red-team run), as qiskit-aer's and IBM's local Estimators do."""
    wanted = 1.0 / precision**2
    nearest = round(wanted)
    if nearest >= 1 and math.isclose(wanted, nearest, rel_tol=1e-12):
        return nearest
    return math.ceil(wanted)


