"""Cost model: exact arithmetic, per-second billing, minimum charges, configuration, budgets."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.cost.model import (
    DEFAULT_PRICES,
    IONQ_FORTE,
    IQM_GARNET,
    RIGETTI_ANKAA,
    SV1,
    Price,
    PriceTable,
    TenantBudgets,
    load_price_table,
    mitigated_circuit_count,
)
from workers.errors import UnknownBackend


def test_default_prices_are_braket_published_figures() -> None:
    assert SV1.per_second_usd == 0.00125  # 0.075 / 60
    assert SV1.minimum_usd == 0.00375  # 3-second minimum
    assert SV1.per_task_usd == 0 and SV1.per_shot_usd == 0
    assert (IQM_GARNET.per_task_usd, IQM_GARNET.per_shot_usd) == (0.30, 0.00145)
    assert (RIGETTI_ANKAA.per_task_usd, RIGETTI_ANKAA.per_shot_usd) == (0.30, 0.0009)
    assert (IONQ_FORTE.per_task_usd, IONQ_FORTE.per_shot_usd) == (0.30, 0.08)
    assert DEFAULT_PRICES["aer.ideal"] is SV1 and DEFAULT_PRICES["aer.noisy"] is IQM_GARNET
    braket = [p for p in DEFAULT_PRICES.values() if "Amazon Braket" in p.source]
    assert braket and all("checked 2025" in p.source for p in braket)
    # every entry names where its figures come from
    assert all("Amazon Braket" in p.source or "IBM Quantum" in p.source
               for p in DEFAULT_PRICES.values())


# --- per vendor --------------------------------------------------------------------------------
def test_ibm_prices_per_second_of_modelled_qpu_time() -> None:
    table = PriceTable()
    ibm = DEFAULT_PRICES["ibm.sherbrooke"]
    assert ibm.per_second_usd == 1.60 and "ibm.com/quantum/pricing" in ibm.source
    assert DEFAULT_PRICES["ibm_runtime.sherbrooke"] is ibm
    assert DEFAULT_PRICES["ibm.torino"].per_second_usd == 1.60
    # 2 circuits x 4000 shots: 1 s per job + 8000 x 250 µs = 3 s -> USD 4.80
    assert table.estimate("ibm.sherbrooke", circuits=2, shots_per_circuit=4000) == 4.80
    # the simulator's wall time is not QPU time: the charge equals the estimate
    assert table.actual("ibm.sherbrooke", circuits=2, shots=8000, simulated_seconds=37.0) == 4.80
    # billed per job in whole seconds: 1 + 1000 x 250 µs = 1.25 s -> 2 s
    assert table.estimate("ibm.torino", circuits=1, shots_per_circuit=1000) == 3.20
    assert "QPU time" in ibm.describe()


def test_braket_local_simulators_priced_as_managed_simulators() -> None:
    table = PriceTable()
    assert DEFAULT_PRICES["braket.local.sv"] is SV1
    dm = DEFAULT_PRICES["braket.local.dm"]
    assert "DM1" in dm.source and dm.per_second_usd == SV1.per_second_usd
    # per minute billed per second: 2 tasks of 4.2 s each -> 2 x 5 s x 0.075/60
    assert table.actual("braket.local.dm", circuits=2, shots=2000, simulated_seconds=8.4) == 0.0125
    # a short task pays the 3-second minimum
    short = table.actual("braket.local.sv", circuits=1, shots=1000, simulated_seconds=0.05)
    assert short == 0.00375
    assert "/min" in dm.describe() and "/task" in IQM_GARNET.describe()


# --- QPU-style: per task + per shot --------------------------------------------------------------
def test_qpu_price_is_exact() -> None:
    table = PriceTable()
    assert table.estimate("aer.noisy", circuits=1, shots_per_circuit=1000) == 1.75
    assert table.estimate("aer.noisy", circuits=3, shots_per_circuit=1000) == 5.25
    assert table.actual("aer.noisy", circuits=3, shots=3000, simulated_seconds=0.42) == 5.25
    assert table.estimate("ionq.forte", circuits=2, shots_per_circuit=100) == 16.6
    assert table.estimate("rigetti.ankaa", circuits=10, shots_per_circuit=4000) == 39.0
    # QPU prices ignore time
    assert table.estimate("aer.noisy", 1, 1000, expected_seconds=500.0) == 1.75


def test_mitigation_overhead_is_counted_through_circuits() -> None:
    table = PriceTable()
    # 4 logical circuits, ZNE with 3 scale factors, 2 readout-calibration circuits -> 14
    circuits = mitigated_circuit_count(4, zne_scale_factors=[1, 3, 5],
                                       readout_calibration_circuits=2)
    assert circuits == 14
    assert table.estimate("aer.noisy", circuits, 1000) == 14 * 1.75 == 24.5
    assert mitigated_circuit_count(4) == 4
    assert mitigated_circuit_count(4, zne_scale_factors=[]) == 4
    with pytest.raises(ValueError):
        mitigated_circuit_count(-1)


# --- simulator-style: per second, billed per started second, minimum per task ------------------
def test_simulator_minimum_charge_per_task() -> None:
    table = PriceTable()
    assert table.estimate("aer.ideal", circuits=1, shots_per_circuit=1000) == 0.00375
    assert table.estimate("aer.ideal", 10, 1000, expected_seconds=0.05) == 0.0375
    assert table.actual("aer.ideal", circuits=1, shots=1000, simulated_seconds=2.9) == 0.00375
    assert table.actual("aer.ideal", circuits=1, shots=1000, simulated_seconds=3.0) == 0.00375


def test_simulator_per_second_billing_rounds_up_to_whole_seconds() -> None:
    table = PriceTable()
    assert table.actual("aer.ideal", 1, 1000, simulated_seconds=3.01) == 0.005  # 4 s
    assert table.actual("aer.ideal", 1, 1000, simulated_seconds=60.0) == 0.075  # 1 minute
    assert table.actual("aer.ideal", 1, 1000, simulated_seconds=59.2) == 0.075
    # 7.2 s over 2 circuits: 3.6 s each -> 4 s each
    assert table.actual("aer.ideal", 2, 2000, simulated_seconds=7.2) == 0.01
    # 100 s over 2: 50 s each, above the minimum
    assert table.estimate("aer.ideal", 2, 1000, expected_seconds=100) == 0.125


def test_billing_increment_is_configurable() -> None:
    price = Price(per_second_usd=0.01, billing_increment_seconds=0.001)
    table = PriceTable(prices={"x": price})
    assert table.actual("x", 1, 10, 1.2344) == 0.01235


def test_zero_circuits_cost_nothing() -> None:
    assert PriceTable().actual("aer.ideal", 0, 0, 0.0) == 0.0
    assert PriceTable().estimate("aer.noisy", 0, 1000) == 0.0


@settings(deadline=None)  # a stall of the shared machine is not a failure
@given(
    circuits=st.integers(1, 200),
    shots=st.integers(1, 100_000),
    seconds=st.floats(0, 10_000, allow_nan=False),
    task_seconds=st.integers(0, 600),
)
def test_charges_are_monotone_and_at_least_the_minimum(
    circuits, shots, seconds, task_seconds
) -> None:
    table = PriceTable()
    for backend in ("aer.ideal", "aer.noisy"):
        price = table.price(backend)
        cost = table.actual(backend, circuits, shots * circuits, seconds)
        assert cost >= circuits * price.minimum_usd - 1e-12
        assert table.actual(backend, circuits, shots * circuits, seconds + 1.0) >= cost
        # one more task of the same size never costs less
        same = table.actual(backend, circuits, shots * circuits, task_seconds * circuits)
        more = table.actual(backend, circuits + 1, shots * (circuits + 1),
                            task_seconds * (circuits + 1))
        assert more > same
    assert table.estimate("aer.noisy", circuits, shots) == pytest.approx(
        circuits * 0.30 + circuits * shots * 0.00145, rel=1e-12
    )


def test_bad_inputs_are_refused() -> None:
    table = PriceTable()
    with pytest.raises(UnknownBackend, match="no price"):
        table.estimate("nope", 1, 1)
    with pytest.raises(ValueError):
        table.actual("aer.ideal", -1, 10, 1.0)
    with pytest.raises(ValueError):
        table.actual("aer.ideal", 1, 10, float("nan"))
    with pytest.raises(ValueError):
        table.actual("aer.ideal", 1, 10, -1.0)
    with pytest.raises(ValueError):
        table.estimate("aer.ideal", True, 10)
    with pytest.raises(ValueError):
        Price(per_shot_usd=-0.1)
    with pytest.raises(ValueError):
        Price(billing_increment_seconds=0)


# --- configuration ----------------------------------------------------------------------------
def test_round_trip_through_dict_and_json() -> None:
    table = PriceTable(default=Price(per_task_usd=1.0, source="fallback"))
    data = json.loads(json.dumps(table.to_dict()))
    assert PriceTable.from_dict(data) == table
    assert PriceTable.from_dict(data).estimate("anything", 2, 5) == 2.0


def test_load_from_yaml_and_json_files_overrides_defaults(tmp_path) -> None:
    overrides = {"prices": {"aer.noisy": {"per_task_usd": 0.3, "per_shot_usd": 0.0009,
                                          "source": "priced like Rigetti Ankaa-3"}}}
    path = tmp_path / "prices.yaml"
    path.write_text(yaml.safe_dump(overrides))
    table = load_price_table(path)
    assert table.estimate("aer.noisy", 1, 1000) == 1.2
    assert table.estimate("aer.ideal", 1, 1000) == 0.00375  # defaults kept
    json_path = tmp_path / "prices.json"
    json_path.write_text(json.dumps(overrides))
    only = load_price_table(json_path, merge_defaults=False)
    assert list(only.prices) == ["aer.noisy"]
    with pytest.raises(UnknownBackend):
        only.estimate("aer.ideal", 1, 1)
    assert load_price_table(overrides).price("aer.noisy").per_shot_usd == 0.0009
    assert load_price_table(None) == PriceTable()


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown price fields"):
        PriceTable.from_dict({"prices": {"x": {"per_shots": 1}}})
    with pytest.raises(ValueError, match="unknown price table fields"):
        PriceTable.from_dict({"price": {}})
    with pytest.raises(ValueError, match="USD"):
        PriceTable.from_dict({"currency": "EUR"})


# --- tenant budgets ---------------------------------------------------------------------------
def test_budgets_remaining_and_check() -> None:
    budgets = TenantBudgets({"acme": 100.0, "lab": 0.3})
    assert budgets.tenants() == ["acme", "lab"]
    assert budgets.remaining("acme", 25.5) == 74.5
    assert budgets.remaining("acme", 120.0) == -20.0  # overspent shows as negative
    assert budgets.check("acme", 98.25, 1.75) is True  # exactly the budget fits
    assert budgets.check("acme", 98.26, 1.75) is False
    assert budgets.check("lab", 0.1, 0.2) is True  # decimal: 0.1 + 0.2 == 0.3
    assert budgets.remaining("lab", 0.1) == 0.2
    assert budgets.remaining("nobody", 5.0) is None
    assert budgets.check("nobody", 1e9, 1e9) is True


def test_default_budget_applies_to_unlisted_tenants() -> None:
    budgets = TenantBudgets({"acme": 10.0}, default=1.0)
    assert budgets.budget("other") == 1.0
    assert budgets.check("other", 0.5, 0.6) is False
    assert budgets.remaining("other", 0.25) == 0.75


def test_budgets_round_trip_and_load(tmp_path) -> None:
    budgets = TenantBudgets({"b": 2.0, "a": 1.5}, default=0.5)
    assert TenantBudgets.from_dict(budgets.to_dict()) == budgets
    path = tmp_path / "budgets.yaml"
    path.write_text("budgets:\n  acme: 250\n  lab: 20.5\n")
    assert TenantBudgets.load(path) == TenantBudgets({"acme": 250.0, "lab": 20.5})
    assert TenantBudgets.load(None) == TenantBudgets()
    with pytest.raises(ValueError):
        TenantBudgets({"x": -1.0})
    with pytest.raises(ValueError):
        TenantBudgets.from_dict({"tenants": {}})
