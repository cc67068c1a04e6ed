"""Drift detection: canaries, the exact baseline, the one-sided test and its power on real Aer
runs (noise scaled to 1.2x is reported within 3 rounds; 200 rounds at the calibration are
quiet)."""

from __future__ import annotations

import json
import math
import pathlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qiskit import QuantumCircuit
from qiskit_aer.noise import NoiseModel, ReadoutError
from scipy.stats import binom

from workers.backends.aer import IDEAL, NOISY, BackendRegistry
from workers.backends.calibration import generate_snapshot
from workers.drift.detection import (
    CANARIES,
    DEFAULT_ALPHA,
    DEFAULT_SHOTS,
    DRIFT_EVENT_FIELDS,
    STATISTIC_NAME,
    DriftMonitor,
    critical_failures,
    detection_power,
    detection_within,
    exact_success_probability,
    ghz_canary,
    mirror_canary,
    required_shots,
    severity_of,
    success_count,
    success_drop_test,
)

ROOT = pathlib.Path(__file__).resolve().parents[4]


@pytest.fixture
def registry() -> BackendRegistry:
    # Own registry: these tests scale the noise, which must not leak into other tests.
    return BackendRegistry()


@pytest.fixture(scope="module")
def monitor_baseline() -> tuple[float, float]:
    """(p0, p at noise x1.2) of the default canary on the default aer.noisy calibration."""
    backend = BackendRegistry().get(NOISY)
    monitor = DriftMonitor()
    return monitor.baseline(backend), monitor.expected_success(backend, 1.2)


# --- canaries --------------------------------------------------------------------------------
def test_ghz_canary_is_ghz5_with_two_successes() -> None:
    canary = ghz_canary(5)
    assert canary.name == "ghz5" and CANARIES["ghz5"].name == "ghz5"
    assert canary.success == {"00000", "11111"}
    assert canary.circuit.count_ops()["cx"] == 4
    assert canary.circuit.count_ops()["measure"] == 5


def test_mirror_canary_returns_to_zero_without_noise(registry: BackendRegistry) -> None:
    canary = mirror_canary(5, layers=2)
    monitor = DriftMonitor(canary=canary)
    ideal = registry.get(IDEAL)
    counts = ideal.run([monitor.canary_circuit(ideal)], 500, 1)[0]
    assert counts == {"00000": 500}
    # barriers keep the transpiler from cancelling the mirrored cx gates on the device too
    noisy = registry.get(NOISY)
    assert monitor.canary_circuit(noisy).count_ops()["cx"] == 16


def test_success_count_ignores_register_spaces() -> None:
    counts = {"00 000": 7, "11111": 5, "00001": 3}
    assert success_count(counts, {"00000", "11111"}) == 12


def test_unknown_canary_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown canary"):
        DriftMonitor(canary="nope")


# --- exact baseline --------------------------------------------------------------------------
def test_exact_probability_applies_readout_per_qubit_in_clbit_order() -> None:
    # qubit 0 prepared 1, qubit 1 prepared 0; different readout errors on each
    circuit = QuantumCircuit(2, 2)
    circuit.x(0)
    circuit.measure([0, 1], [0, 1])
    model = NoiseModel()
    model.add_readout_error(ReadoutError([[0.9, 0.1], [0.2, 0.8]]), [0])  # p10 0.1, p01 0.2
    model.add_readout_error(ReadoutError([[0.97, 0.03], [0.04, 0.96]]), [1])
    # success "01": clbit 0 reads 1 (0.8), clbit 1 reads 0 (0.97)
    assert exact_success_probability(circuit, {"01"}, model) == pytest.approx(0.8 * 0.97, 1e-12)
    assert exact_success_probability(circuit, {"10"}, model) == pytest.approx(0.2 * 0.03, 1e-12)
    assert exact_success_probability(circuit, {"01"}, None) == pytest.approx(1.0, 1e-12)


def test_exact_probability_follows_a_permuted_measurement() -> None:
    circuit = QuantumCircuit(3, 2)
    circuit.x(2)
    circuit.measure([2, 0], [0, 1])  # clbit 0 <- qubit 2 (=1), clbit 1 <- qubit 0 (=0)
    model = NoiseModel()
    model.add_readout_error(ReadoutError([[0.9, 0.1], [0.25, 0.75]]), [2])
    assert exact_success_probability(circuit, {"01"}, model) == pytest.approx(0.75, 1e-12)


def test_baseline_matches_a_high_shot_run_and_ignores_the_current_noise_scale(
    registry: BackendRegistry,
) -> None:
    backend = registry.get(NOISY)
    monitor = DriftMonitor()
    p0 = monitor.baseline(backend)
    shots = 400_000
    counts = backend.run([monitor.canary_circuit(backend)], shots, 5)[0]
    sampled = success_count(counts, CANARIES["ghz5"].success) / shots
    assert abs(sampled - p0) < 4 * math.sqrt(p0 * (1 - p0) / shots)
    registry.set_noise_scale(NOISY, 1.5)
    assert monitor.baseline(backend) == p0  # cached per calibration version, scale 1.0
    assert DriftMonitor().baseline(backend) == pytest.approx(p0, abs=1e-12)
    assert monitor.expected_success(backend, 1.5) < p0


def test_baseline_is_cached_per_calibration_version() -> None:
    monitor = DriftMonitor()
    first = BackendRegistry(calibration=generate_snapshot(seed=7)).get(NOISY)
    other = BackendRegistry(calibration=generate_snapshot(seed=8)).get(NOISY)
    assert first.calibration_version != other.calibration_version
    p_first, p_other = monitor.baseline(first), monitor.baseline(other)
    assert p_first != p_other
    assert len(monitor._baselines) == 2


def test_ideal_backend_baseline_is_one_and_never_alarms(registry: BackendRegistry) -> None:
    monitor = DriftMonitor(shots=2000)
    backend = registry.get(IDEAL)
    assert monitor.baseline(backend) == pytest.approx(1.0, abs=1e-12)
    report = monitor.run_round(backend, seed=3)
    assert report.severity == "none" and report.p_value == 1.0
    assert math.isfinite(report.statistic) and math.isfinite(report.threshold)
    with pytest.raises(ValueError, match="no calibration"):
        monitor.shots_to_detect(backend)


# --- the test statistic -----------------------------------------------------------------------
@pytest.mark.parametrize("shots,p0,alpha", [(10_000, 0.8635, 1e-4), (32_000, 0.977, 1e-2),
                                            (500, 0.5, 0.05), (100, 0.99, 1e-3)])
def test_critical_count_is_the_exact_binomial_boundary(shots: int, p0: float, alpha: float):
    c = critical_failures(shots, p0, alpha)
    q0 = 1 - p0
    assert binom.sf(c - 1, shots, q0) <= alpha < binom.sf(c - 2, shots, q0)


@settings(max_examples=300, deadline=None)
@given(
    shots=st.integers(1, 50_000),
    p0=st.floats(0.05, 0.999),
    alpha=st.sampled_from([1e-6, 1e-4, 1e-3, 0.01, 0.05]),
    fraction=st.floats(0, 1),
)
def test_statistic_threshold_and_p_value_agree(shots, p0, alpha, fraction) -> None:
    successes = round(fraction * shots)
    test = success_drop_test(successes, shots, p0, alpha)
    assert (test.statistic >= test.threshold) == (test.p_value <= alpha) == test.alarm
    assert 0.0 <= test.p_value <= 1.0
    assert (severity_of(test.p_value, alpha) != "none") == test.alarm


def test_statistic_is_the_standardized_drop() -> None:
    test = success_drop_test(successes=8500, shots=10_000, p0=0.8635, alpha=1e-4)
    assert test.statistic == pytest.approx((0.8635 - 0.85) / math.sqrt(0.8635 * 0.1365 / 1e4))
    assert test.p_value == pytest.approx(binom.sf(1499, 10_000, 1 - 0.8635))
    # more successes than expected is never drift
    assert success_drop_test(9000, 10_000, 0.8635, 1e-4).p_value > 0.99


def test_severity_tiers() -> None:
    assert severity_of(0.5, 1e-4) == "none"
    assert severity_of(1e-4, 1e-4) == "warning"
    assert severity_of(2e-6, 1e-4) == "warning"
    assert severity_of(0.9e-6, 1e-4) == "critical"
    assert severity_of(0.9e-5, 1e-4, critical_factor=10) == "critical"


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        success_drop_test(11, 10, 0.9, 1e-4)
    with pytest.raises(ValueError):
        success_drop_test(5, 10, 0.9, 0.0)
    with pytest.raises(ValueError):
        DriftMonitor(alpha=1.5)
    with pytest.raises(ValueError):
        DriftMonitor(shots=0)


def test_power_calculation(monitor_baseline: tuple[float, float]) -> None:
    p0, p1 = monitor_baseline
    assert 0.85 < p0 < 0.88 and 0.82 < p1 < p0 - 0.02
    # the defaults: one round detects x1.2 with power > 0.998, three rounds essentially always
    assert detection_power(p0, p1, DEFAULT_SHOTS, DEFAULT_ALPHA) > 0.998
    assert detection_within(p0, p1, DEFAULT_SHOTS, DEFAULT_ALPHA, 3) > 1 - 1e-8
    needed = required_shots(p0, p1, DEFAULT_ALPHA, 0.99)
    assert detection_power(p0, p1, needed, DEFAULT_ALPHA) >= 0.99
    assert detection_power(p0, p1, int(needed * 0.9), DEFAULT_ALPHA) < 0.99
    assert needed < DEFAULT_SHOTS
    # MEASURED.md's table (p0 0.977 -> 0.9725, alpha 1 %): one-sided power 0.34 at 4k shots,
    # 0.93 at 16k, 1.00 at 64k
    assert detection_power(0.977, 0.9725, 4000, 0.01) == pytest.approx(0.34, abs=0.06)
    assert detection_power(0.977, 0.9725, 16_000, 0.01) == pytest.approx(0.93, abs=0.03)
    assert detection_power(0.977, 0.9725, 64_000, 0.01) > 0.999


def test_shots_to_detect_uses_the_backend_calibration(registry: BackendRegistry) -> None:
    backend = registry.get(NOISY)
    monitor = DriftMonitor()
    shots = monitor.shots_to_detect(backend, drift_scale=1.2, power=0.99)
    assert 5_000 < shots < DEFAULT_SHOTS
    assert monitor.shots_to_detect(backend, drift_scale=1.5) < shots


# --- reports ---------------------------------------------------------------------------------
def test_report_fields_match_the_drift_event_record(registry: BackendRegistry) -> None:
    schema = json.loads((ROOT / "schemas" / "DriftEvent.avsc").read_text())
    names = [f["name"] for f in schema["fields"]]
    assert list(DRIFT_EVENT_FIELDS) == [n for n in names if n != "at_ms"]
    monitor = DriftMonitor(shots=2000)
    report = monitor.run_round(registry.get(NOISY), seed=1)
    event = report.to_event(at_ms=1_700_000_000_000)
    assert list(event) == names
    assert event["statistic_name"] == STATISTIC_NAME and event["canary"] == "ghz5"
    assert event["calibration_version"] == registry.get(NOISY).calibration_version

    from schemas.codec import codec  # the event encodes under the committed schema

    assert codec("DriftEvent").decode(codec("DriftEvent").encode(event)) == event


def test_rounds_are_numbered_per_backend_and_deterministic(registry: BackendRegistry) -> None:
    backend = registry.get(NOISY)
    first, second = DriftMonitor(shots=2000), DriftMonitor(shots=2000)
    a = [first.run_round(backend, seed) for seed in (1, 2)]
    b = [second.run_round(backend, seed) for seed in (1, 2)]
    assert a == b
    assert [r.round for r in a] == [1, 2]
    batch = first.run_rounds(backend, 9, 3)
    assert [r.round for r in batch] == [3, 4, 5]
    assert len({r.successes for r in batch}) > 1  # each copy has its own seed
    # copy i of a batch is the round a single call with seed 9 + 2113*i gives
    single = [DriftMonitor(shots=2000).run_round(backend, 9 + 2113 * i) for i in range(3)]
    assert [r.successes for r in batch] == [r.successes for r in single]
    assert first.run_round(registry.get(IDEAL), 1).round == 1


# --- power on real Aer runs ------------------------------------------------------------------
@pytest.mark.parametrize("seed", [11, 12, 13, 14, 15])
def test_noise_scaled_to_1_2_is_reported_within_three_rounds(
    registry: BackendRegistry, seed: int
) -> None:
    backend = registry.get(NOISY)
    monitor = DriftMonitor()  # the defaults: alpha 1e-4, 10,000 shots, GHZ-5
    assert monitor.run_round(backend, seed).severity == "none"  # as calibrated
    registry.set_noise_scale(NOISY, 1.2)
    reports = [monitor.run_round(backend, seed * 100 + r) for r in range(3)]
    assert any(r.alarm for r in reports), [(r.statistic, r.threshold) for r in reports]
    assert all(r.calibration_version == backend.calibration_version for r in reports)


def test_noise_halved_is_a_move_that_does_not_alarm(registry: BackendRegistry) -> None:
    """A success rate above the calibration's is no drift to page on, but what was measured
    on the backend before it (a readout calibration) is stale: the round says it moved."""
    backend = registry.get(NOISY)
    monitor = DriftMonitor()
    registry.set_noise_scale(NOISY, 0.5)
    report = monitor.run_round(backend, 21)
    assert not report.alarm and report.severity == "none"
    assert report.rose and report.moved


def test_two_hundred_rounds_at_the_calibration_raise_no_alarm(registry: BackendRegistry):
    backend = registry.get(NOISY)
    monitor = DriftMonitor()  # the defaults
    reports = []
    for batch in range(4):  # 4 backend calls of 50 rounds each, seeds never overlapping
        reports += monitor.run_rounds(backend, seed=1000 + batch * 200_000, rounds=50)
    assert len(reports) == 200 and reports[-1].round == 200
    assert [r for r in reports if r.alarm] == []
    assert [r for r in reports if r.moved] == []  # nor a rise: readout calibrations stay
    assert min(r.p_value for r in reports) > DEFAULT_ALPHA
    # the statistic is standardized: mean ~0, sd ~1 under no drift
    z = [r.statistic for r in reports]
    mean = sum(z) / len(z)
    sd = math.sqrt(sum((x - mean) ** 2 for x in z) / (len(z) - 1))
    assert abs(mean) < 0.3 and 0.8 < sd < 1.2


@pytest.mark.slow
def test_two_thousand_rounds_false_alarm_rate_is_at_most_alpha(registry: BackendRegistry):
    backend = registry.get(NOISY)
    monitor = DriftMonitor()
    reports = []
    for batch in range(20):
        reports += monitor.run_rounds(backend, seed=5000 + batch * 300_000, rounds=100)
    alarms = sum(r.alarm for r in reports)
    # expected at most 0.2 alarms; P(>= 3 | 2000 rounds, 1e-4) ~ 1e-3
    assert alarms <= 2


def test_a_noisy_backend_without_a_calibration_is_not_watched(registry: BackendRegistry):
    """braket.local.dm's noise is Braket's own: its baseline came out 1.0 and every round at
    unchanged noise was a critical alarm (p 0.0, red-team run). Unwatchable, with the reason;
    a noiseless backend without a calibration stays watchable (baseline 1.0)."""
    from workers.drift.detection import unwatchable

    class NoisyWithoutCalibration:
        name, calibration, noise_model = "vendor.device", None, None

    assert "no baseline" in unwatchable(NoisyWithoutCalibration())
    with pytest.raises(ValueError, match="no baseline"):
        DriftMonitor(shots=200).baseline(NoisyWithoutCalibration())
    assert unwatchable(registry.get(IDEAL)) is None
    assert unwatchable(registry.get(NOISY)) is None
    # its calibration is qlane's, its noise the fake backend's own: baseline 1.0 before,
    # and a round at unchanged noise critical (success 0.93)
    assert "no baseline" in unwatchable(registry.get("ibm_runtime.sherbrooke"))
    assert unwatchable(registry.get("ibm.sherbrooke")) is None
    pytest.importorskip("braket.devices")
    assert unwatchable(registry.get("braket.local.dm")) is not None
    assert unwatchable(registry.get("braket.local.sv")) is None
