"""The one error hierarchy of qlane.

Every error says, where it is raised, whether retrying could help (`retryable`), whether
the job's own input caused it (`input_fault`: metrics count such a dead letter `rejected`,
not `failed`, so an error-ratio alert pages on the system, not on bad input), and carries a
short stable `reason` (the class name) that dead letters and metrics use.
"""

from __future__ import annotations

import errno


class QlaneError(Exception):
    """Base of every qlane error."""

    retryable: bool = False
    input_fault: bool = False

    @property
    def reason(self) -> str:
        return type(self).__name__


class PermanentError(QlaneError):
    """Retrying the same input can never succeed: dead-letter it."""

    retryable = False


class RetryableError(QlaneError):
    """A transient condition: the same input may succeed on a later attempt."""

    retryable = True


# --- decoding (schemas/) -------------------------------------------------------------
class UndecodableRecord(PermanentError):
    """The bytes are not a record this system can read."""

    input_fault = True


class CorruptRecord(UndecodableRecord):
    """Bad framing or a datum that does not parse under its writer schema."""


class DecodedTooLarge(UndecodableRecord):
    """A datum that would take more memory decoded than a record may (empty arrays and
    records cost a byte on the wire and a Python object each: schemas/decoded_size.py)."""


class UnknownSchema(UndecodableRecord):
    """The record names a schema fingerprint this system does not know."""


class UnreadableRecordBatch(UndecodableRecord):
    """A record batch on the broker could not be read at all: an unknown or corrupt
    compressed payload, a wrong checksum, records that do not parse, or more bytes than
    `max_uncompressed_batch_mb` once decompressed (streams/kafka/record_batches.py)."""


class RecordHeldBack(UndecodableRecord):
    """The worker held as many bytes of large records as it may (max_held_records_mb) when
    this one came: it was not taken, and its value stays in its topic for a replay
    (streams/kafka/record_batches.py)."""


class RecordTooLarge(PermanentError):
    """A record qlane would have to send on (re-routed to its key's partition) is larger than
    its producer may send."""

    input_fault = True


class ResultTooLarge(PermanentError):
    """The job ran, but its result is larger than a record may be: the result topic's record
    and the workflow's table entry (which stores it) must each fit the producer's limit."""

    input_fault = True


class KeyMismatch(PermanentError):
    """The record key is not the UTF-8 workflow id of the value."""

    input_fault = True


# --- job validation (workers/) -------------------------------------------------------
class InvalidJob(PermanentError):
    """The job request is decodable but cannot be run as asked."""

    input_fault = True


class InvalidCircuit(InvalidJob):
    """The circuit source does not parse as OpenQASM 2 or 3."""


class CircuitTooLarge(InvalidJob):
    """The circuit exceeds the backend's or the configured size limits."""


class InvalidShots(InvalidJob):
    """The shot count is outside the configured bounds."""


class ParameterMismatch(InvalidJob):
    """Parameter sets do not match the circuit's free parameters."""


class InvalidObservable(InvalidJob):
    """An observable is malformed or does not match the circuit's qubit count."""


class UnknownBackend(InvalidJob):
    """The job names a backend this worker does not provide."""


# --- untrusted programs (workers/circuits/) ------------------------------------------
class ForbiddenInclude(InvalidCircuit):
    """The program includes a file other than the standard qelib1.inc / stdgates.inc."""


class ResourceLimitExceeded(InvalidJob):
    """Processing the program needs more than a configured bound allows: parser nesting
    depth, or the sandbox's memory or output size (deterministic, so not retried)."""


class SandboxFailure(RetryableError):
    """The sandbox process handling the record died or ran out of time. Possibly the host's
    fault, so retried, but only a bounded number of attempts (then PoisonRecord)."""


class SandboxTimeout(SandboxFailure):
    """The sandbox exceeded its wall-clock or CPU time bound and was killed."""


class SandboxCpuExceeded(SandboxTimeout):
    """The program used the sandbox's whole CPU-time bound. CPU time, unlike wall time, does
    not grow with the host's load: another attempt would spend it again, so none is made."""

    retryable = False
    input_fault = True


class SandboxCrashed(SandboxFailure):
    """The sandbox process died (a signal, an abort, an exit) while handling the record."""


class PoisonRecord(PermanentError):
    """Processing the record killed or timed out its sandbox (or its worker) on every one of
    the configured attempts: dead-lettered so the partition moves on."""


# --- workflow semantics (streams/) ---------------------------------------------------
class IdempotencyConflict(PermanentError):
    """The workflow id was seen before with a different request fingerprint."""

    input_fault = True


class TenantMismatch(PermanentError):
    """The payload names another tenant than the tenant topic it was written to (the topic,
    granted to one principal by Kafka ACLs, is the tenant's identity)."""

    input_fault = True


# --- execution -----------------------------------------------------------------------
class ExecutionFailed(PermanentError):
    """The backend rejected the job in a way a retry cannot fix."""


class BrokersMissing(RetryableError):
    """Fewer of the Kafka cluster's brokers answer than the replicas a new topic needs: it
    is not created with fewer (a silent durability loss); again once they are back."""


class BackendUnavailable(RetryableError):
    """The backend failed transiently (timeout, overload, injected fault)."""


class SimulationTimeout(PermanentError):
    """A simulation on the worker's own simulator ran past execute_timeout_s: the job's
    doing (another try takes as long), not the backend's, so it does not count against the
    backend's breaker."""

    input_fault = True


class JobTooLarge(InvalidJob):
    """The job asks for more simulation than the configured limit (max_simulation_seconds)."""


class DeadlineExceeded(PermanentError):
    """The job's latency budget ran out before it could finish. Counted as its own input's
    doing: one tenant's 1 ms deadlines paged QlaneErrorRatioHigh (a red-team run); a system
    too slow for fair deadlines shows in the lag and progress alerts."""

    input_fault = True


class BudgetExceeded(PermanentError):
    """Running the job would exceed its cost limit or its tenant's budget."""

    input_fault = True


class StagePaused(RetryableError):
    """A stage stopped consuming because too many records were dead-lettered."""


class WorkerResourcesExhausted(RetryableError):
    """The worker ran out of something of its own (file descriptors, memory, disk space)
    while handling the record: not the job's fault; replay it once the worker is healthy.
    Left as the OSError, good jobs were dead-lettered as `rejected` bad input that no
    replay filter named (a red-team run: a worker's descriptors used up)."""


RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOSPC})


def worker_fault(error: BaseException) -> BaseException:
    """`error`, or WorkerResourcesExhausted for an OSError that says the worker itself ran
    out of a resource, and for Python's MemoryError."""
    if isinstance(error, MemoryError) or (
            isinstance(error, OSError) and error.errno in RESOURCE_ERRNOS):
        exhausted = WorkerResourcesExhausted(
            f"the worker ran out of resources: {type(error).__name__}: {error}")
        exhausted.__cause__ = error
        return exhausted
    return error


def error_classes() -> dict[str, type[QlaneError]]:
    """Every qlane error class loaded, by name: the reasons a dead letter or status names."""
    found: dict[str, type[QlaneError]] = {}
    pending = [QlaneError]
    while pending:
        cls = pending.pop()
        found.setdefault(cls.__name__, cls)
        pending.extend(cls.__subclasses__())
    return found
