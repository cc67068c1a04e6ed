"""Every Prometheus metric of qlane, defined in one place (definitions only; stages update them).

Naming (DESIGN.md): `qlane_` prefix, base units (`_seconds`, `_usd`), counters end in `_total`,
and labels take values from bounded sets only (stage, outcome, error class, backend, configured
tenant, topic/partition): never a workflow id. docs/operations.md lists what each one means and
the alerts built on them (deploy/prometheus/alerts.yml).

All metrics live in `REGISTRY`, a dedicated `CollectorRegistry`; `render_metrics()` gives the
text exposition a `/metrics` endpoint serves (content type `CONTENT_TYPE_LATEST`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
    generate_latest,
)

from workers.errors import error_classes

# `_created` series double every counter and histogram and nothing here alerts on them.
disable_created_metrics()

REGISTRY = CollectorRegistry(auto_describe=True)

# Label values the stages use (bounded sets; documented in docs/operations.md).
STAGES = ("preprocess", "execute", "mitigate", "fallback", "cost", "drift")
OUTCOMES = ("ok", "duplicate", "failed", "rejected", "fallback", "cancelled", "cancel_ignored")
BREAKER_CLOSED, BREAKER_HALF_OPEN, BREAKER_OPEN = 0, 1, 2
CACHE_RESULTS = ("hit", "miss")
DRIFT_SEVERITIES = ("none", "warning", "critical")

# Stage latencies go from ~1 ms (a cached preprocess) to minutes (a large noisy job).
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)

STAGE_DURATION = Histogram(
    "qlane_stage_duration_seconds",
    "Time a stage spent handling one record, seconds; a batch's backend call, made before "
    "its records are handled, is in qlane_backend_call_seconds.",
    ["stage"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
JOBS = Counter(
    "qlane_jobs_total",
    "Records a stage finished, by outcome: ok (passed on), duplicate (acknowledged, not re-run), "
    "failed (an accepted job failed and was dead-lettered), rejected (bad input dead-lettered "
    "before admission), fallback (answered by a fallback), cancelled (a cancel applied, or a "
    "job dropped by its cancel), cancel_ignored (a cancel too late).",
    ["stage", "outcome"],
    registry=REGISTRY,
)
DEAD_LETTERS = Counter(
    "qlane_dead_letters_total",
    "Records written to the dead-letter topic, by stage and reason (the error class name).",
    ["stage", "reason"],
    registry=REGISTRY,
)
RETRIES = Counter(
    "qlane_retries_total",
    "Retries of a backend call after a retryable error.",
    ["backend"],
    registry=REGISTRY,
)
FALLBACKS = Counter(
    "qlane_fallbacks_total",
    "Jobs answered by a fallback target (classical or another backend), by reason.",
    ["reason"],
    registry=REGISTRY,
)
REFETCHED = Counter(
    "qlane_refetched_records_total",
    "Records a worker was handed again after handling them (ignored), by stage.",
    ["stage"],
    registry=REGISTRY,
)
DUPLICATES = Counter(
    "qlane_duplicates_total",
    "Duplicate job requests acknowledged and not re-run.",
    registry=REGISTRY,
)
REROUTED = Counter(
    "qlane_rerouted_records_total",
    "Job records found off their key's partition and re-sent to it (a client whose "
    "partitioner is not the Java client's murmur2, or one that named the partition).",
    ["stage"],
    registry=REGISTRY,
)
BREAKER_STATE = Gauge(
    "qlane_breaker_state",
    "Circuit breaker per backend: 0 closed, 1 half-open, 2 open.",
    ["backend"],
    registry=REGISTRY,
)
CALLS_PAST_TIMEOUT = Gauge(
    "qlane_calls_past_timeout",
    "Backend calls still running in a worker thread past their timeout (a thread cannot be "
    "stopped; until they end, their backend's calls go to the simulator process or are "
    "refused as unavailable).",
    ["backend"],
    registry=REGISTRY,
)
TRANSPILE_CACHE_LOOKUPS = Counter(
    "qlane_transpile_cache_lookups_total",
    "Transpile-cache lookups by result (hit or miss).",
    ["result"],
    registry=REGISTRY,
)
BACKEND_CALL_DURATION = Histogram(
    "qlane_backend_call_seconds",
    "Wall time of one backend call (a batch of jobs or one job), whatever its outcome; backend "
    "`several` for a batch on more than one, seconds.",
    ["backend"],
    buckets=DURATION_BUCKETS,
    registry=REGISTRY,
)
EXECUTE_BATCH_SIZE = Histogram(
    "qlane_execute_batch_size",
    "Circuits per backend call.",
    buckets=BATCH_SIZE_BUCKETS,
    registry=REGISTRY,
)
DRIFT_STATISTIC = Gauge(
    "qlane_drift_statistic",
    "Last drift round's statistic per backend (success_drop_z: standardized drop of the "
    "canary's success probability).",
    ["backend"],
    registry=REGISTRY,
)
DRIFT_THRESHOLD = Gauge(
    "qlane_drift_threshold",
    "Threshold the last drift statistic was compared against, per backend.",
    ["backend"],
    registry=REGISTRY,
)
DRIFT_ALARM = Gauge(
    "qlane_drift_alarm",
    "1 if the last drift round of the backend reported drift (warning or critical), else 0.",
    ["backend"],
    registry=REGISTRY,
)
DRIFT_ROUNDS = Counter(
    "qlane_drift_rounds_total",
    "Drift rounds run, by backend and severity (none, warning, critical).",
    ["backend", "severity"],
    registry=REGISTRY,
)
COST = Counter(
    "qlane_cost_usd_total",
    "Cost charged for executed jobs, US dollars.",
    ["backend"],
    registry=REGISTRY,
)
BUDGET = Gauge(
    "qlane_budget_usd",
    "Configured budget per tenant, US dollars (configured tenants only).",
    ["tenant"],
    registry=REGISTRY,
)
BUDGET_REMAINING = Gauge(
    "qlane_budget_remaining_usd",
    "Budget left per tenant, US dollars; negative when overspent (configured tenants only).",
    ["tenant"],
    registry=REGISTRY,
)
BUDGET_REFUSALS = Counter(
    "qlane_budget_refusals_total",
    "Jobs refused because their tenant's budget had no room for their estimate (configured "
    "tenants only).",
    ["tenant"],
    registry=REGISTRY,
)
CONSUMER_LAG = Gauge(
    "qlane_consumer_lag",
    "Records between this worker's committed offset and the log end, per assigned topic "
    "partition.",
    ["topic", "partition"],
    registry=REGISTRY,
)
BROKER_UNANSWERED = Gauge(
    "qlane_broker_unanswered_seconds",
    "Seconds since the broker last answered this worker's log-end lookup (a consumer-lag "
    "sample, every 5 s), while its lookups go unanswered: the broker, or the leaders of its "
    "partitions, cannot be reached (the lag keeps its last value meanwhile). 0 when the last "
    "one was answered, or while the worker holds no partitions.",
    registry=REGISTRY,
)
LAST_PROGRESS = Gauge(
    "qlane_last_progress_timestamp_seconds",
    "Unix time at which this worker last finished a record, or started if it has finished none.",
    registry=REGISTRY,
)
ASSIGNMENT_PENDING = Gauge(
    "qlane_assignment_pending_seconds",
    "Seconds since this worker started or its current rebalance began, while its streams do "
    "not run yet (0 while they run): a worker stuck taking its partitions (e.g. its "
    "transactional producers waiting on a broker) exports no lag and finishes nothing.",
    registry=REGISTRY,
)
SANDBOX_FAILURES = Counter(
    "qlane_sandbox_failures_total",
    "Sandbox processes killed or timed out while preparing a record, by stage and reason.",
    ["stage", "reason"],
    registry=REGISTRY,
)
POISON_RECORDS = Counter(
    "qlane_poison_records_total",
    "Records dead-lettered after killing their sandbox or worker on every attempt.",
    ["stage"],
    registry=REGISTRY,
)
GUARD_HELD_SECONDS = Counter(
    "qlane_dlq_guard_held_seconds_total",
    "Seconds a stage held a source partition because its records kept being dead-lettered.",
    ["stage"],
    registry=REGISTRY,
)
WEB_CONNECTIONS_REFUSED = Counter(
    "qlane_web_connections_refused_total",
    "Connections to the web port closed as they came, its limit of open ones reached.",
    registry=REGISTRY,
)
BUILD_INFO = Info(
    "qlane_build",
    "qlane version of this worker (the value is always 1).",
    registry=REGISTRY,
)


def _package_version() -> str:
    try:
        return version("qlane")
    except PackageNotFoundError:
        return "unknown"


BUILD_INFO.info({"version": _package_version()})


def forget_drift_round() -> None:
    """Drop the last drift round's gauges (a worker no longer the leader): its alarm would
    otherwise keep `max by (backend) (qlane_drift_alarm)` at 1 after the new leader's rounds
    find no drift, until the worker restarts. The rounds counter stays (a counter's history)."""
    for gauge in (DRIFT_STATISTIC, DRIFT_THRESHOLD, DRIFT_ALARM):
        gauge.clear()


def render_metrics() -> bytes:
    """The text exposition of every qlane metric."""
    return generate_latest(REGISTRY)


# The stages that count records in qlane_jobs_total.
JOB_STAGES = ("preprocess", "execute", "mitigate", "variational")


def count_from_zero(backends: Iterable[str] = ()) -> None:
    """The series the alerts and dashboards take increase() or rate() of, at 0 from the
    start: a series that appears at 1 counts nothing for them (a worker's first failures
    after a start were lost to QlaneErrorRatioHigh, its first budget refusals to
    QlaneBudgetExhausted; a burst of 30 dead letters read as an increase of 0.3, and the
    first $8.90 charged to a backend was missing from the cost panel: red-team runs). Dead
    letters: every stage with every reason a qlane error gives."""
    for stage in JOB_STAGES:
        for outcome in ("ok", "failed", "rejected"):
            JOBS.labels(stage, outcome).inc(0)
        for reason in sorted(error_classes()):
            DEAD_LETTERS.labels(stage, reason).inc(0)
        # QlaneStageHoldsPartition: a stage's first hold after a start paged nothing
        GUARD_HELD_SECONDS.labels(stage).inc(0)
    for backend in backends:
        COST.labels(backend).inc(0)
    # A worker that finished nothing since its start reads as stuck since its start, not since
    # 1970 (QlaneNoProgress said "for 56 years").
    LAST_PROGRESS.set(time.time())


__all__ = [
    "BATCH_SIZE_BUCKETS",
    "BREAKER_CLOSED",
    "BREAKER_HALF_OPEN",
    "BREAKER_OPEN",
    "BREAKER_STATE",
    "BUDGET",
    "BUDGET_REFUSALS",
    "BUDGET_REMAINING",
    "BUILD_INFO",
    "count_from_zero",
    "CACHE_RESULTS",
    "CONSUMER_LAG",
    "CONTENT_TYPE_LATEST",
    "COST",
    "DEAD_LETTERS",
    "DRIFT_ALARM",
    "DRIFT_ROUNDS",
    "DRIFT_SEVERITIES",
    "DRIFT_STATISTIC",
    "DRIFT_THRESHOLD",
    "DUPLICATES",
    "DURATION_BUCKETS",
    "BACKEND_CALL_DURATION",
    "EXECUTE_BATCH_SIZE",
    "forget_drift_round",
    "FALLBACKS",
    "GUARD_HELD_SECONDS",
    "JOBS",
    "JOB_STAGES",
    "LAST_PROGRESS",
    "ASSIGNMENT_PENDING",
    "OUTCOMES",
    "POISON_RECORDS",
    "REFETCHED",
    "REGISTRY",
    "REROUTED",
    "RETRIES",
    "SANDBOX_FAILURES",
    "STAGES",
    "STAGE_DURATION",
    "TRANSPILE_CACHE_LOOKUPS",
    "render_metrics",
]
