"""Every qlane metric follows the naming rules, read back from the text exposition."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.ops import metrics

# name -> (type, label names), as DESIGN.md and docs/operations.md describe them
EXPECTED = {
    "qlane_stage_duration_seconds": ("histogram", {"stage"}),
    "qlane_jobs_total": ("counter", {"stage", "outcome"}),
    "qlane_dead_letters_total": ("counter", {"stage", "reason"}),
    "qlane_retries_total": ("counter", {"backend"}),
    "qlane_fallbacks_total": ("counter", {"reason"}),
    "qlane_duplicates_total": ("counter", set()),
    "qlane_refetched_records_total": ("counter", {"stage"}),
    "qlane_rerouted_records_total": ("counter", {"stage"}),
    "qlane_breaker_state": ("gauge", {"backend"}),
    "qlane_calls_past_timeout": ("gauge", {"backend"}),
    "qlane_transpile_cache_lookups_total": ("counter", {"result"}),
    "qlane_execute_batch_size": ("histogram", set()),
    "qlane_backend_call_seconds": ("histogram", {"backend"}),
    "qlane_drift_statistic": ("gauge", {"backend"}),
    "qlane_drift_threshold": ("gauge", {"backend"}),
    "qlane_drift_alarm": ("gauge", {"backend"}),
    "qlane_drift_rounds_total": ("counter", {"backend", "severity"}),
    "qlane_cost_usd_total": ("counter", {"backend"}),
    "qlane_budget_usd": ("gauge", {"tenant"}),
    "qlane_budget_remaining_usd": ("gauge", {"tenant"}),
    "qlane_budget_refusals_total": ("counter", {"tenant"}),
    "qlane_consumer_lag": ("gauge", {"topic", "partition"}),
    "qlane_broker_unanswered_seconds": ("gauge", set()),
    "qlane_last_progress_timestamp_seconds": ("gauge", set()),
    "qlane_assignment_pending_seconds": ("gauge", set()),
    "qlane_build_info": ("gauge", {"version"}),
    "qlane_sandbox_failures_total": ("counter", {"stage", "reason"}),
    "qlane_poison_records_total": ("counter", {"stage"}),
    "qlane_dlq_guard_held_seconds_total": ("counter", {"stage"}),
    "qlane_web_connections_refused_total": ("counter", set()),
}
# Label names with bounded value sets. Never a workflow id, key, offset or free text.
BOUNDED_LABELS = {"stage", "outcome", "reason", "backend", "result", "severity", "tenant",
                  "topic", "partition", "version"}
NON_BASE_UNITS = {"ms", "milliseconds", "microseconds", "us", "minutes", "hours", "days",
                  "kilobytes", "megabytes", "kb", "mb", "percent", "cents", "dollars"}
NAME = re.compile(r"^qlane_[a-z0-9]+(_[a-z0-9]+)*$")


def _collectors():
    return {
        name: value
        for name, value in vars(metrics).items()
        if isinstance(value, prometheus_client.metrics.MetricWrapperBase)
    }


@pytest.fixture
def exposition():
    """The exposition with one sample for every labelled metric (removed afterwards)."""
    touched = []
    for collector in _collectors().values():
        names = collector._labelnames
        if names and collector._name != "qlane_build":
            values = tuple(f"test-{n}" for n in names)
            collector.labels(*values)
            touched.append((collector, values))
    try:
        text = metrics.render_metrics().decode()
        yield text, list(text_string_to_metric_families(text))
    finally:
        for collector, values in touched:
            collector.remove(*values)


def _exposed_name(family) -> str:
    return family.name + "_total" if family.type == "counter" else family.name


def test_every_expected_metric_is_defined_with_its_type_and_labels(exposition) -> None:
    _, families = exposition
    found = {}
    for family in families:
        labels = set()
        for sample in family.samples:
            labels |= set(sample.labels) - {"le"}
        found[_exposed_name(family)] = (family.type, labels)
    assert found == EXPECTED


def test_names_follow_prometheus_conventions(exposition) -> None:
    text, families = exposition
    for family in families:
        name = _exposed_name(family)
        assert NAME.match(name), name
        words = set(name.split("_"))
        assert not words & NON_BASE_UNITS, f"{name}: use base units"
        if family.type == "counter":
            assert name.endswith("_total")
            assert all(s.name == name for s in family.samples), name
        else:
            assert not name.endswith("_total"), f"{name}: only counters end in _total"
        if "seconds" in words or "timestamp" in words:
            assert name.endswith("_seconds") or name.endswith("_seconds_total"), name
        if "usd" in words:
            assert name.endswith("_usd") or name.endswith("_usd_total"), name
        assert family.documentation, f"{name} has no help text"
    assert "_created" not in text  # no doubled series


def test_labels_are_bounded(exposition) -> None:
    _, families = exposition
    for family in families:
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= BOUNDED_LABELS, (sample.name, sample.labels)
            assert not {"workflow_id", "workflow", "key", "offset"} & set(sample.labels)


def test_build_info_carries_the_version(exposition) -> None:
    text, _ = exposition
    assert re.search(r'^qlane_build_info\{version="[^"]+"\} 1\.0$', text, re.M)


def test_metrics_live_in_their_own_registry() -> None:
    default = {
        name for c in list(prometheus_client.REGISTRY._collector_to_names) for name in
        prometheus_client.REGISTRY._collector_to_names[c]
    }
    assert not any(name.startswith("qlane_") for name in default)
    assert isinstance(metrics.REGISTRY, prometheus_client.CollectorRegistry)
    assert isinstance(metrics.render_metrics(), bytes)


def test_updates_show_in_the_exposition() -> None:
    metrics.COST.labels("test-backend").inc(1.75)
    metrics.BREAKER_STATE.labels("test-backend").set(metrics.BREAKER_OPEN)
    try:
        families = {
            _exposed_name(f): f
            for f in text_string_to_metric_families(metrics.render_metrics().decode())
        }
        cost = [s for s in families["qlane_cost_usd_total"].samples
                if s.labels == {"backend": "test-backend"}]
        assert cost[0].value == 1.75
        state = families["qlane_breaker_state"].samples
        assert [s.value for s in state if s.labels["backend"] == "test-backend"] == [2.0]
    finally:
        metrics.COST.remove("test-backend")
        metrics.BREAKER_STATE.remove("test-backend")


def test_label_value_constants() -> None:
    assert (metrics.BREAKER_CLOSED, metrics.BREAKER_HALF_OPEN, metrics.BREAKER_OPEN) == (0, 1, 2)
    assert metrics.DRIFT_SEVERITIES == ("none", "warning", "critical")
    assert metrics.CACHE_RESULTS == ("hit", "miss")
    assert {"ok", "failed", "rejected"} <= set(metrics.OUTCOMES)


def test_module_needs_no_faust() -> None:
    code = ("import sys, streams.ops.metrics\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('faust', 'aiokafka')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_a_worker_that_lost_the_leadership_forgets_its_drift_alarm() -> None:
    metrics.DRIFT_ALARM.labels("test-backend").set(1)
    metrics.DRIFT_STATISTIC.labels("test-backend").set(4.2)
    metrics.DRIFT_ROUNDS.labels("test-backend", "critical").inc()

    metrics.forget_drift_round()

    exposition = metrics.render_metrics().decode()
    assert 'qlane_drift_alarm{backend="test-backend"}' not in exposition
    assert 'qlane_drift_statistic{backend="test-backend"}' not in exposition
    assert 'qlane_drift_rounds_total{backend="test-backend",severity="critical"} 1.0' in exposition
    metrics.DRIFT_ROUNDS.remove("test-backend", "critical")


def test_the_series_alerts_take_increase_of_start_at_zero():
    """A series that appears at 1 has no increase() for Prometheus: QlaneBudgetExhausted
    missed a tenant's first refusals on every worker start (a red-team run)."""
    from streams.kafka.topics import TopicNames
    from streams.runtime import Runtime
    from streams.settings import Settings

    settings = Settings(tenant_budgets={"zeroed": 5.0})
    Runtime(settings, TopicNames.from_settings(settings))
    registry = metrics.REGISTRY
    assert registry.get_sample_value("qlane_budget_refusals_total", {"tenant": "zeroed"}) == 0
    for stage in metrics.JOB_STAGES:
        assert registry.get_sample_value(
            "qlane_jobs_total", {"stage": stage, "outcome": "failed"}) is not None


def test_a_worker_that_finished_nothing_reads_as_idle_since_its_start_not_since_1970():
    metrics.LAST_PROGRESS.set(0)
    before = time.time()
    metrics.count_from_zero()
    assert before <= metrics.LAST_PROGRESS._value.get() <= time.time()


def test_dead_letters_and_cost_exist_at_zero_from_the_start():
    """A burst of 30 dead letters read as an increase of 0.3, and a backend's first $8.90 was
    missing from the cost panel: their series appeared at their first value (red-team)."""
    metrics.count_from_zero(["aer.ideal", "ibm.sherbrooke"])
    registry = metrics.REGISTRY
    for stage in metrics.JOB_STAGES:
        for reason in ("DeadlineExceeded", "InvalidCircuit", "BudgetExceeded", "PoisonRecord"):
            assert registry.get_sample_value(
                "qlane_dead_letters_total", {"stage": stage, "reason": reason}) is not None
        assert registry.get_sample_value(
            "qlane_jobs_total", {"stage": stage, "outcome": "rejected"}) is not None
        assert registry.get_sample_value(
            "qlane_dlq_guard_held_seconds_total", {"stage": stage}) is not None
    for backend in ("aer.ideal", "ibm.sherbrooke"):
        assert registry.get_sample_value("qlane_cost_usd_total", {"backend": backend}) is not None
