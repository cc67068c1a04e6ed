"""A job's own cost limit, checked before it is trusted as a limit."""

import math

import pytest

from streams.workflow.accounting import check_budget
from workers.errors import BudgetExceeded, InvalidJob


@pytest.mark.parametrize("limit", [math.nan, -1.0, math.inf, -math.inf])
def test_a_cost_limit_that_is_not_a_finite_amount_is_an_invalid_job(limit):
    """NaN compared false with every estimate, so it read as no limit at all."""
    with pytest.raises(InvalidJob, match="cost_limit_usd"):
        check_budget(None, {"cost_limit_usd": limit, "tenant": "t"}, 0.01)


def test_an_estimate_over_the_jobs_limit_is_over_budget():
    with pytest.raises(BudgetExceeded):
        check_budget(None, {"cost_limit_usd": 0.001, "tenant": "t"}, 0.01)
    with pytest.raises(BudgetExceeded, match="exceeds the job's limit 0.0000$"):  # not -0.0000
        check_budget(None, {"cost_limit_usd": -0.0, "tenant": "t"}, 0.01)
    # A limit too small for four decimals read `0.0000`, as if it were none (a red-team Java
    # client's Double.MIN_VALUE).
    with pytest.raises(BudgetExceeded, match="USD 0.0100 exceeds the job's limit 4.94e-324$"):
        check_budget(None, {"cost_limit_usd": 5e-324, "tenant": "t"}, 0.01)
    with pytest.raises(BudgetExceeded, match="USD 2e-05 exceeds the job's limit 1e-05$"):
        check_budget(None, {"cost_limit_usd": 1e-5, "tenant": "t"}, 2e-5)


def budget_runtime(budgets: dict, default: float | None = None):
    from types import SimpleNamespace

    from workers.cost.model import TenantBudgets

    return SimpleNamespace(controls={}, spend_written={}, reserved_usd={},
                           budgets=TenantBudgets(budgets, default))


def test_a_job_that_fits_exactly_after_many_charges_is_not_refused():
    """399 charges of 0.00375 summed in floats to 1.4962500000000012, and the 400th job,
    which fits a budget of 1.5 exactly, was refused (red-team run)."""
    runtime = budget_runtime({"acme": 1.5})
    for _ in range(399):
        key = "spend:acme:0"
        runtime.spend_written[key] = round(runtime.spend_written.get(key, 0.0) + 0.00375, 9)
    check_budget(runtime, {"tenant": "acme"}, 0.00375)
    with pytest.raises(BudgetExceeded):
        check_budget(runtime, {"tenant": "acme"}, 0.00376)


def test_budget_gauges_and_refusals_follow_every_check_of_configured_tenants_only():
    """The gauges were set only by a charge: after a restart whose jobs were all refused
    there were none, and no budget alert while 1,226 jobs were refused (red-team run)."""
    from streams.ops import metrics

    runtime = budget_runtime({"acme": 1.0}, default=5.0)
    runtime.spend_written["spend:acme:0"] = 0.9
    refused = metrics.BUDGET_REFUSALS.labels("acme")._value.get()
    with pytest.raises(BudgetExceeded):
        check_budget(runtime, {"tenant": "acme"}, 0.2)
    assert metrics.BUDGET_REMAINING.labels("acme")._value.get() == pytest.approx(0.1)
    assert metrics.BUDGET_REFUSALS.labels("acme")._value.get() == refused + 1
    runtime.spend_written["spend:someone:0"] = 5.0
    with pytest.raises(BudgetExceeded):  # a default budget: refused, but no label of its own
        check_budget(runtime, {"tenant": "someone"}, 0.2)
    labels = {sample.labels.get("tenant") for family in metrics.REGISTRY.collect()
              for sample in family.samples}
    assert "someone" not in labels


def test_a_batchs_holds_count_against_the_next_job_but_not_against_their_own():
    """A batch call holds each job's estimate before it runs (count=False: the job's own
    check counts a refusal, once); the job's own check later leaves its own hold out."""
    from streams.ops import metrics
    from streams.workflow.accounting import release, reserve

    runtime = budget_runtime({"acme": 1.0})
    refused = metrics.BUDGET_REFUSALS.labels("acme")._value.get()
    first = reserve(runtime, {"tenant": "acme"}, 0.6, count=False)
    with pytest.raises(BudgetExceeded):
        reserve(runtime, {"tenant": "acme"}, 0.6, count=False)
    assert metrics.BUDGET_REFUSALS.labels("acme")._value.get() == refused
    check_budget(runtime, {"tenant": "acme"}, 0.6, own_hold=first)  # its own hold: fits
    with pytest.raises(BudgetExceeded):
        check_budget(runtime, {"tenant": "acme"}, 0.6)
    assert metrics.BUDGET_REFUSALS.labels("acme")._value.get() == refused + 1
    release(runtime, {"tenant": "acme"}, first)
    assert runtime.reserved_usd == {}


def test_a_variational_evaluations_costs_reach_its_tenants_topic():
    """Charged under "<id>#eval<n>", which has no table entry: its CostEvents were not
    copied to the tenant's cost topic (53 on the shared one, 0 on the tenant's; red-team)."""
    from types import SimpleNamespace

    from streams.kafka.tenants import workflow_entry
    from streams.kafka.topics import WORKFLOW_TABLE

    entry = {"source": "qlane.jobs.gamma:0:3"}
    table = {"gamma.v1": entry, "gamma.x#eval2": {"source": "qlane.jobs.gamma:1:4"}}
    runtime = SimpleNamespace(app=SimpleNamespace(tables={WORKFLOW_TABLE: table}))
    assert workflow_entry(runtime, b"gamma.v1#eval17") is entry
    assert workflow_entry(runtime, b"gamma.x#eval2") is table["gamma.x#eval2"]  # its own id
    assert workflow_entry(runtime, b"gamma.v1#evalx") is None
    assert workflow_entry(runtime, b"gamma.none#eval1") is None


def test_a_job_on_a_backend_priced_by_time_is_estimated_for_its_time():
    """A 1M-shot job on braket.local.sv was estimated at the per-task minimum, $0.00375,
    passed a cost limit of $0.005 and was charged $0.016 (a red-team run): the price's
    seconds were never given the job's estimated time."""
    from types import SimpleNamespace

    from streams.workflow.accounting import estimate_usd
    from workers.backends.registry import BackendRegistry
    from workers.circuits.transpile import TranspileCache
    from workers.cost.model import PriceTable
    from workers.execution.preparation import prepare, simulation_estimate
    from workers.jobs import JobSpec
    from workers.limits import Limits

    registry = BackendRegistry()
    runtime = SimpleNamespace(registry=registry, prices=PriceTable())
    body = "".join(f"h q[{i}];" for i in range(12))
    source = f'OPENQASM 2.0; include "qelib1.inc"; qreg q[12]; creg c[12]; {body} measure q -> c;'
    spec = JobSpec("timed", source, shots=1_000_000, backend="braket.local.sv")
    prepared = prepare(spec, registry, TranspileCache(), Limits())
    seconds = simulation_estimate(prepared, registry.get("braket.local.sv"))
    assert seconds > 10
    estimate = estimate_usd(runtime, prepared)
    assert estimate == runtime.prices.actual("braket.local.sv", 1, 1_000_000, seconds) > 0.005
    with pytest.raises(BudgetExceeded):
        check_budget(None, {"cost_limit_usd": 0.005, "tenant": "t"}, estimate)
    spec = JobSpec("per-shot", source, shots=1_000, backend="aer.ideal")  # not priced by time
    prepared = prepare(spec, registry, TranspileCache(), Limits())
    assert estimate_usd(runtime, prepared) == runtime.prices.estimate("aer.ideal", 1, 1_000)
