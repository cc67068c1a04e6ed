"""What every stage shares in one worker process: settings, topics, backends, codecs."""

from __future__ import annotations

import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import PackageNotFoundError, version

from schemas.codec import codec
from streams.kafka.tenants import (
    admitted_from,
    check_budget_tenant,
    tenant_copy,
    workflow_entry,
)
from streams.kafka.topics import TopicNames, parse_job_topic, raw_topic
from streams.ops import metrics
from streams.ops.logs import lifecycle_level
from streams.ops.warm_up import WarmUps
from streams.settings import Settings
from streams.workflow.deadletter import (
    JOB_ORIGIN_HEADER,
    JOB_RECORD_HEADER,
    JOB_TOPIC_HEADER,
    OMITTED_HEADER,
    SourceRecord,
    dead_letter_headers,
    error_class,
    fit_dead_letter,
    record_bytes,
)
from streams.workflow.idempotency import HandledRecords
from workers.backends.aer import BackendRegistry
from workers.backends.faults import parse_fault_map
from workers.backends.ibm import IBMAccount
from workers.backends.layout import DeviceTranspileCache
from workers.circuits.transpile import TranspileCache
from workers.cost.model import PriceTable, TenantBudgets, load_price_table
from workers.errors import RecordHeldBack
from workers.execution.breaker import BreakerBoard
from workers.mitigation.readout import ReadoutCalibrationCache

log = logging.getLogger("qlane")


@cache
def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def now_ms() -> int:
    return int(time.time() * 1000)


# Statuses that only report progress; settings.status_progress_events=false leaves them out.
PROGRESS_STATES = frozenset({"accepted", "prepared", "executing"})
# The longest status detail sent; details quote errors and producers' text (a cancel's reason).
MAX_DETAIL_CHARS = 1000

# Set while a record is handled whose backend call was already made (fused_path=batch): its
# progress statuses would be sent after the work they announce, with its terminal status.
ran_before_handled: ContextVar[bool] = ContextVar("ran_before_handled", default=False)


def apply_noise_control(registry: BackendRegistry, controls, backend: str) -> None:
    """Set the backend's noise scale to its control's, if there is one. The registry's scale,
    not a built backend's: a backend not built yet is built at it."""
    control = controls.get(f"noise:{backend}") if controls is not None else None
    if control and registry.noise_scale(backend) != control["noise_scale"]:
        try:
            registry.set_noise_scale(backend, control["noise_scale"])
        except (KeyError, ValueError) as error:
            # A control for a backend whose noise does not scale (`qlane control noise
            # --backend aer.ideal` wrote one) raised in every stage that ran a job on it:
            # every worker stopped, at every start (a red-team run).
            log.debug("noise control for %s not applied: %s", backend, error)


@dataclass
class Runtime:
    settings: Settings
    names: TopicNames
    registry: BackendRegistry = field(init=False)
    breakers: BreakerBoard = field(init=False)
    prices: PriceTable = field(init=False)
    budgets: TenantBudgets = field(init=False)
    # Two threads: a backend call that hangs past its deadline must not stall every job.
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="qlane-exec")
    )
    # Executors left to calls that ran past their timeout (streams/agents/threads.py).
    abandoned_executors: list = field(default_factory=list)
    # backend -> events set as its calls still running past their timeout in those end
    overrunning_calls: dict = field(default_factory=dict)
    topics: dict = field(default_factory=dict)  # short name -> Faust topic, set by the app
    app: object = None  # the Faust app, set by create_app
    paused_stages: set = field(default_factory=set)
    controls: object = None  # the `controls` GlobalTable, set by streams.workflow.control
    control_reader: object = None  # streams.workflow.control.ControlReader, once it reads
    spend_settled: object = None  # asyncio.Task: the reader caught up since the assignment
    sandbox: object = None  # workers.circuits.sandbox.SandboxPool, started with the worker
    simulator: object = None  # its SIMULATE pool when settings.simulator_process
    # streams.workflow.poison.InFlight batches with a backend call under way
    in_flight_calls: set = field(default_factory=set)
    stop_asked: bool = False  # a stop was asked for (SIGTERM, SIGINT): marks no more calls
    host_workers: object = None  # workers.host_workers.HostWorkers, with simulator_process=auto
    simulator_wanted: bool | None = None  # the last decision of simulator_process_wanted
    # monotonic time `auto` chose the threads, or of the last long call that used the process
    simulator_unwanted_since: float | None = None
    attempts: object = None  # streams.workflow.poison.AttemptLedger, set by the stages
    lane_channels: dict = field(default_factory=dict)  # (stage, lane) -> Faust channel
    gates: dict = field(default_factory=dict)  # stage -> streams.workflow.lanes.LaneGate
    warm_ups: WarmUps = field(default_factory=WarmUps)  # run in one thread once started

    def apply_controls(self, backend: str) -> None:
        """Bring this worker's backend in line with the cluster-wide noise control."""
        apply_noise_control(self.registry, self.controls, backend)

    def drifted(self, backend: str) -> bool:
        """Whether the backend's last canary round alarmed. This worker's cached readout
        calibrations of the backend are dropped at each round it sees that found the backend
        moved (an alarm, or a success rate significantly above the calibration's), and at the
        first round after those that found it as calibrated again: a calibration measured
        during drift stayed in use after it (mitigated <ZZZZZ> 1.19 ± 0.007 for an exact 1.0,
        a red-team run)."""
        state = self.controls.get(f"drift:{backend}") if self.controls is not None else None
        if not state:
            return False
        alarm = state.get("severity", "none") != "none"
        moved = alarm or state.get("moved") is True
        seen = self.drift_seen_ms.get(backend)
        if moved and seen != state["at_ms"]:
            self.drift_seen_ms[backend] = state["at_ms"]
            self.readout_cache.invalidate(backend)
        elif not moved and seen is not None:
            self.drift_seen_ms.pop(backend)  # as calibrated again
            self.readout_cache.invalidate(backend)
        return alarm
    cache: TranspileCache = field(init=False)
    readout_cache: ReadoutCalibrationCache = field(init=False)
    handled: HandledRecords = field(init=False)
    # backend -> the last round that found it moved, acted on (none while it is as calibrated)
    drift_seen_ms: dict = field(default_factory=dict)
    spend_written: dict = field(default_factory=dict)  # spend keys this worker owns -> USD
    # spend key -> [the last owner's total it went on from, when it took the key over (ms)]
    spend_taken: dict = field(default_factory=dict)
    # names this worker's spend records (`by`): a record of another writer read late is told
    # apart from its own (streams/workflow/accounting.py `add_missed_spend`)
    writer_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    # tenant -> USD estimated for its jobs between the execute step's budget check and their
    # charge (streams/workflow/accounting.py `reserve`)
    reserved_usd: dict = field(default_factory=dict)
    # workflow id -> {record address: job topic} of its records in a fused batch's backend
    # call not handled yet (no table entry says they run): a cancel finds them there
    in_batch_call: dict = field(default_factory=dict)
    # record key -> cancel records taken by a fused batch and not handled yet
    pending_cancels: dict = field(default_factory=dict)
    # Cancel records arrived at a batch stage and not taken yet, by key (fused_batch.py).
    arrived_cancels: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        settings = self.settings
        self.cache = DeviceTranspileCache(maxsize=settings.transpile_cache_size)
        self.handled = HandledRecords(settings.handled_records_memory)
        self.readout_cache = ReadoutCalibrationCache()
        self.registry = BackendRegistry(
            faults=parse_fault_map(settings.faults) or None,
            ibm_mode=settings.ibm_mode,
            ibm_account=IBMAccount.load(
                token=settings.ibm_token.get_secret_value() if settings.ibm_token else None,
                instance=settings.ibm_instance, channel=settings.ibm_channel,
                url=settings.ibm_url, secrets_file=settings.ibm_secrets_file,
            ),
            offered=settings.backends,
        )
        self.breakers = BreakerBoard(
            failure_threshold=settings.breaker_failure_threshold,
            reset_timeout_s=settings.breaker_reset_timeout_s,
        )
        self.prices = load_price_table(settings.prices_file)
        self.budgets = TenantBudgets({check_budget_tenant(name): amount
                                      for name, amount in settings.tenant_budgets.items()})
        for tenant in self.budgets.tenants():  # there from the start, not from a first charge
            metrics.BUDGET.labels(tenant).set(self.budgets.budget(tenant))
            # At 0 from the start: a series that appears at 1 has no increase() for the
            # alert, and QlaneBudgetExhausted missed a tenant's first refusals (a red-team run).
            metrics.BUDGET_REFUSALS.labels(tenant).inc(0)
        metrics.count_from_zero(self.registry.names())

    @property
    def worker_version(self) -> str:
        return package_version("qlane")

    @property
    def max_record_bytes(self) -> int:
        """The most a record may be: past the producer's maximum request size a send fails in
        the producer and stops the worker."""
        return self.app.conf.producer_max_request_size

    def fits_a_record(self, key: str | bytes | None, value: bytes) -> bool:
        if isinstance(key, str):
            key = key.encode()
        return record_bytes(key, value, []) <= self.max_record_bytes

    async def send(self, short_name: str, key: str | bytes | None, value: bytes, **kwargs) -> None:
        if isinstance(key, str):
            key = key.encode()
        await self.topics[short_name].send(key=key, value=value, **kwargs)
        # A tenant's workflow: its results, statuses and costs also go to the tenant's topic.
        copy = tenant_copy(self, short_name, key)
        if copy is not None:
            await copy.send(key=key, value=value, **kwargs)

    def topic_named(self, name: str):
        """The Faust topic of a full topic name (a tenant's), made on first use."""
        topic = self.topics.get(name)
        if topic is None:
            topic = self.topics[name] = raw_topic(self.app, name,
                                                  partitions=self.settings.partitions)
        return topic

    async def flush(self) -> None:
        """Wait until everything sent so far (table changelog included) is on the broker."""
        await self.app.producer.flush()

    def publishes_progress(self) -> bool:
        """Whether a progress status of the record being handled is published."""
        setting = self.settings.status_progress_events
        if setting == "auto":
            return not ran_before_handled.get()
        return bool(setting)

    @staticmethod
    def status_record(workflow_id: str, state: str, stage: str, detail: str = "",
                      attempt: int = 1, progress: dict | None = None) -> bytes:
        """A JobStatus record's value; a detail past MAX_DETAIL_CHARS is cut (a status is
        sent on every path, past the producer's limit it would stop the worker)."""
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[:MAX_DETAIL_CHARS] + "…"
        return codec("JobStatus").encode({
            "workflow_id": workflow_id, "state": state, "stage": stage, "detail": detail,
            "attempt": attempt, "at_ms": now_ms(), "progress": progress,
        })

    async def status(
        self, workflow_id: str, state: str, stage: str, detail: str = "", attempt: int = 1,
        progress: dict | None = None,
    ) -> None:
        if state in PROGRESS_STATES and not self.publishes_progress():
            log.debug("%s %s (%s), not published", workflow_id, state, stage,
                      extra={"workflow_id": workflow_id, "stage": stage, "state": state})
            return
        await self.send("status", workflow_id, self.status_record(
            workflow_id, state, stage, detail, attempt, progress))
        level = lifecycle_level(state)
        # A detail can quote an error about the job's payload: shown at debug level only.
        shown = f": {detail}" if detail and level == logging.DEBUG else ""
        log.log(level, "%s %s (%s)%s", workflow_id, state, stage, shown,
                extra={"workflow_id": workflow_id, "stage": stage, "state": state})

    async def dead_letter(
        self, source: SourceRecord, stage: str, error: BaseException, attempts: int = 1
    ) -> None:
        headers = dead_letter_headers(
            source,
            stage=stage,
            error=error,
            attempts=attempts,
            worker_version=self.worker_version,
        )
        if parse_job_topic(self.settings.topic_prefix, source.topic) is None:
            # A stage record: the job topic its workflow came from, where a replay sends
            # the JobRequest it carries (its tenant and lane).
            entry = workflow_entry(self, source.key)
            admitted = admitted_from(entry)
            if admitted is not None:
                headers.append((JOB_TOPIC_HEADER, admitted.encode()))
                headers.append((JOB_RECORD_HEADER, str(entry["source"]).encode()))
                if isinstance(entry.get("origin"), str):
                    headers.append((JOB_ORIGIN_HEADER, entry["origin"].encode()))
        if isinstance(error, RecordHeldBack):
            # Its value was never taken: a replay reads it from its source.
            headers.append((OMITTED_HEADER, str(error).encode()[:1000]))
        key, value, headers = fit_dead_letter(
            source.key, source.value, headers, self.max_record_bytes)
        # Stamped now, not with the source's time (kept in `qlane.dlq.source.timestamp`): a
        # dead letter of a record stamped 1970 was deleted by the next retention check, within
        # minutes, as the first record of its segment (a red-team run).
        await self.topics["deadletter"].send(key=key, value=value, headers=headers)
        context = {"workflow_id": (source.key or b"").decode(errors="replace"), "stage": stage}
        log.warning("dead-lettered %s from %s", error_class(error), source.address,
                    extra=context)
        # Error messages can quote the job (a parser error shows circuit text): debug only.
        log.debug("dead letter detail: %s", str(error)[:500], extra=context)
