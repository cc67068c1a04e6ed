"""Aer noise models built from a calibration snapshot and a noise scale.

Per physical gate: a depolarizing error that reproduces the calibrated (scaled) gate error,
composed with thermal relaxation over the gate's duration from the (scaled) T1/T2. Per qubit:
a readout error from the calibrated (scaled) assignment probabilities. `rz` is virtual and
error-free. A scale multiplies every error probability and divides T1 and T2; results are
clipped to valid channels. Scale 1.0 is the snapshot as calibrated; scale 0 is noiseless.
"""

from __future__ import annotations

import functools
import math
from typing import Any

from qiskit_aer.noise import (
    NoiseModel,
    ReadoutError,
    depolarizing_error,
    thermal_relaxation_error,
)

from workers.backends.calibration import CalibrationSnapshot

SINGLE_QUBIT_NOISY_GATES = ("sx", "x")
TWO_QUBIT_GATE = "cx"
MAX_READOUT_ERROR = 0.5
NOISE_MODEL_CACHE_SIZE = 32


class ConvertedOnceNoiseModel(NoiseModel):
    """A NoiseModel that serialises itself once.

    Aer converts the noise model to a dict on every `run()` call (tens of ms for 8 qubits).
    The models built here are never changed after construction, so the dict is kept.
    """

    _serialised: dict[str, Any] | None = None

    def to_dict(self, serializable: bool = False) -> dict[str, Any]:
        if not serializable:
            return super().to_dict(serializable=False)
        if self._serialised is None:
            self._serialised = super().to_dict(serializable=True)
        return self._serialised


def validate_noise_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, int | float):
        raise ValueError(f"noise scale must be a number, got {scale!r}")
    if not math.isfinite(scale) or scale < 0:
        raise ValueError(f"noise scale must be finite and >= 0, got {scale!r}")
    return float(scale)


def depolarizing_parameter(gate_error: float, num_qubits: int) -> float:
    """The depolarizing λ whose average gate infidelity is `gate_error`: λ = r·d/(d-1)."""
    dim = 2**num_qubits
    return min(max(gate_error, 0.0) * dim / (dim - 1), 1.0)


def scaled_relaxation_ns(
    snapshot: CalibrationSnapshot, qubit: int, scale: float
) -> tuple[float, float]:
    """(T1, T2) in ns after dividing by `scale`, with T2 capped at 2·T1."""
    if scale == 0:
        return math.inf, math.inf
    t1 = snapshot.t1_us[qubit] * 1000.0 / scale
    t2 = min(snapshot.t2_us[qubit] * 1000.0 / scale, 2.0 * t1)
    return t1, t2


@functools.lru_cache(maxsize=NOISE_MODEL_CACHE_SIZE)
def build_noise_model(snapshot: CalibrationSnapshot, scale: float = 1.0) -> NoiseModel:
    """The noise model of `snapshot` at `scale`; built once per (snapshot, scale), then shared.

    Callers must not modify the returned model.
    """
    scale = validate_noise_scale(scale)
    model = ConvertedOnceNoiseModel(basis_gates=list(snapshot.basis_gates))
    relaxation = [scaled_relaxation_ns(snapshot, q, scale) for q in range(snapshot.num_qubits)]

    def relax(qubit: int, duration_ns: float):
        t1, t2 = relaxation[qubit]
        return thermal_relaxation_error(t1, t2, duration_ns)

    for q in range(snapshot.num_qubits):
        lam = depolarizing_parameter(scale * snapshot.single_qubit_error[q], 1)
        error = depolarizing_error(lam, 1).compose(relax(q, snapshot.single_qubit_duration_ns))
        model.add_quantum_error(error, list(SINGLE_QUBIT_NOISY_GATES), [q])

        p10 = min(scale * snapshot.readout_p1_given_0[q], MAX_READOUT_ERROR)
        p01 = min(scale * snapshot.readout_p0_given_1[q], MAX_READOUT_ERROR)
        model.add_readout_error(ReadoutError([[1 - p10, p10], [p01, 1 - p01]]), [q])

    for (a, b), gate_error, duration in zip(
        snapshot.edges, snapshot.cx_error, snapshot.cx_duration_ns, strict=True
    ):
        depolarizing = depolarizing_error(depolarizing_parameter(scale * gate_error, 2), 2)
        for control, target in ((a, b), (b, a)):
            # In a 2-qubit error the first tensor factor acts on the second qubit of qargs.
            relaxation_pair = relax(target, duration).tensor(relax(control, duration))
            model.add_quantum_error(
                depolarizing.compose(relaxation_pair), TWO_QUBIT_GATE, [control, target]
            )
    return model
