"""Measured accuracy and cost of the mitigation stage, for tests, docs and the benchmark harness.

Everything here is seeded: the same arguments give the same figures (timings aside).

    /work/main/.venv/bin/python -m bench.mitigation_bench          # accuracy (~1 min)
    /work/main/.venv/bin/python -m bench.mitigation_bench --cost   # plus cost and DD effect
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import numpy as np
from qiskit.quantum_info import SparsePauliOp, Statevector

from workers.backends.aer import NOISY, BackendRegistry
from workers.backends.calibration import CalibrationSnapshot, generate_snapshot
from workers.circuits.parsing import parse_circuit
from workers.circuits.transpile import TranspileCache
from workers.execution.preparation import execute, prepare
from workers.jobs import JobSpec, MitigationSpec, ObservableSpec, ZneSpec, parse_observable
from workers.limits import Limits
from workers.mitigation.combine import mitigate
from workers.mitigation.readout import ReadoutCalibrationCache, nearest_probabilities

ZNE_NOISE_SCALE = 3.0
ZNE_SHOTS = 64000
REM_SHOTS = 20000
BENCH_ZNE = ZneSpec((1.0, 3.0, 5.0), "global", "richardson")


def hea_qasm(num_qubits: int = 6, layers: int = 2) -> str:
    """A hardware-efficient ansatz in OpenQASM 3: ry, rz on every qubit, then a cx chain,
    `layers` times, and a final ry, rz layer; one `input float` per angle."""
    names, body = [], []
    for layer in range(layers + 1):
        for q in range(num_qubits):
            for gate in ("ry", "rz"):
                name = f"t{layer}_{q}_{gate}"
                names.append(name)
                body.append(f"{gate}({name}) q[{q}];")
        if layer < layers:
            body += [f"cx q[{q}], q[{q + 1}];" for q in range(num_qubits - 1)]
    head = ["OPENQASM 3.0;", 'include "stdgates.inc";']
    head += [f"input float {name};" for name in names] + [f"qubit[{num_qubits}] q;"]
    return "\n".join(head + body) + "\n"


def ghz_qasm(num_qubits: int = 5) -> str:
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{num_qubits}];", "h q[0];"]
    lines += [f"cx q[{q}], q[{q + 1}];" for q in range(num_qubits - 1)]
    return "\n".join(lines) + "\n"


def hea_observables(num_qubits: int) -> tuple[ObservableSpec, ...]:
    """Nearest-neighbour ZZ sum and X magnetisation (two measurement bases)."""
    zz = "+".join("I" * (num_qubits - 2 - i) + "ZZ" + "I" * i for i in range(num_qubits - 1))
    x = "+".join("I" * (num_qubits - 1 - i) + "X" + "I" * i for i in range(num_qubits))
    return parse_observable(zz), parse_observable(x)


def gate_noise_only(snapshot: CalibrationSnapshot) -> CalibrationSnapshot:
    """The same device with perfect readout (ZNE alone is judged on the noise it scales)."""
    zeros = (0.0,) * snapshot.num_qubits
    return snapshot.with_changes(readout_p1_given_0=zeros, readout_p0_given_1=zeros)


def exact_values(
    qasm: str, parameter_sets: list[tuple[float, ...]], observables: tuple[ObservableSpec, ...]
) -> np.ndarray:
    circuit = parse_circuit(qasm)
    operators = [
        SparsePauliOp([t.pauli for t in o.terms], [t.coeff for t in o.terms]) for o in observables
    ]
    out = []
    for values in parameter_sets:
        state = Statevector(
            circuit.assign_parameters(dict(zip(circuit.parameters, values, strict=True)))
        )
        out.append([float(state.expectation_value(op).real) for op in operators])
    return np.array(out)


def zne_accuracy(
    seed: int = 0,
    *,
    noise_scale: float = ZNE_NOISE_SCALE,
    shots: int = ZNE_SHOTS,
    num_qubits: int = 6,
    layers: int = 2,
    parameter_sets: int = 20,
    zne: ZneSpec | None = BENCH_ZNE,
    readout: bool = False,
    readout_errors: bool = True,
    dynamical_decoupling: bool = False,
) -> dict[str, Any]:
    """Median |raw - exact| and |mitigated - exact| over parameter sets and both observables
    of a hardware-efficient ansatz on aer.noisy (ring8, seed 7) with its noise x noise_scale.

    `readout_errors=False` zeroes the device's readout errors (gate noise only).
    """
    rng = np.random.default_rng(seed)
    qasm = hea_qasm(num_qubits, layers)
    num_parameters = parse_circuit(qasm).num_parameters
    sets = [
        tuple(float(v) for v in rng.uniform(-np.pi / 2, np.pi / 2, num_parameters))
        for _ in range(parameter_sets)
    ]
    observables = hea_observables(num_qubits)
    snapshot = generate_snapshot()
    if not readout_errors:
        snapshot = gate_noise_only(snapshot)
    registry = BackendRegistry({NOISY: noise_scale}, calibration=snapshot)
    spec = JobSpec(
        f"wf-zne-bench-{seed}",
        qasm,
        parameter_sets=tuple(sets),
        observables=observables,
        shots=shots,
        backend=NOISY,
        mitigation=MitigationSpec(
            zne=zne, readout=readout, dynamical_decoupling=dynamical_decoupling
        ),
    )
    started = time.perf_counter()
    prepared = prepare(spec, registry, TranspileCache(), Limits(), ReadoutCalibrationCache())
    prepared_at = time.perf_counter()
    counts = execute(prepared, registry, seed + 1)
    executed_at = time.perf_counter()
    outcome = mitigate(prepared, counts)
    done = time.perf_counter()

    exact = exact_values(qasm, sets, observables).reshape(-1)
    raw = np.array([e.raw_value for e in outcome.estimates])
    mitigated = np.array([e.value for e in outcome.estimates])
    raw_error = float(np.median(np.abs(raw - exact)))
    mitigated_error = float(np.median(np.abs(mitigated - exact)))
    return {
        "raw_median_error": raw_error,
        "mitigated_median_error": mitigated_error,
        "error_reduction": raw_error / mitigated_error,
        "raw_median_std_error": float(np.median([e.raw_std_error for e in outcome.estimates])),
        "mitigated_median_std_error": float(np.median([e.std_error for e in outcome.estimates])),
        "technique": outcome.report["technique"],
        "circuits": len(prepared.tasks),
        "seconds": {
            "prepare": prepared_at - started,
            "execute": executed_at - prepared_at,
            "mitigate": done - executed_at,
        },
        "noise_profile": (
            f"aer.noisy ring8 seed 7{'' if readout_errors else ' without readout errors'}, "
            f"noise x{noise_scale:g}"
        ),
        "shots": shots,
    }


def tvd(p: dict[str, float], q: dict[str, float]) -> float:
    return 0.5 * sum(abs(p.get(k, 0.0) - q.get(k, 0.0)) for k in set(p) | set(q))


def rem_accuracy(
    seed: int = 0, *, shots: int = REM_SHOTS, noise_scale: float = 1.0, num_qubits: int = 5
) -> dict[str, Any]:
    """TVD to the ideal GHZ distribution of raw counts and of the readout-mitigated
    quasi-distribution (negatives clipped, renormalised) on aer.noisy."""
    registry = BackendRegistry({NOISY: noise_scale})
    spec = JobSpec(
        f"wf-rem-bench-{seed}",
        ghz_qasm(num_qubits),
        shots=shots,
        backend=NOISY,
        mitigation=MitigationSpec(readout=True),
    )
    prepared = prepare(spec, registry, TranspileCache(), Limits(), ReadoutCalibrationCache())
    counts = execute(prepared, registry, seed + 1)
    outcome = mitigate(prepared, counts)
    ideal = {"0" * num_qubits: 0.5, "1" * num_qubits: 0.5}
    raw = {k: v / shots for k, v in counts[0].items()}
    quasi = outcome.mitigated_probabilities[0]
    mitigated = nearest_probabilities(quasi)
    raw_tvd, mitigated_tvd = tvd(raw, ideal), tvd(mitigated, ideal)
    return {
        "raw_tvd": raw_tvd,
        "mitigated_tvd": mitigated_tvd,
        "tvd_reduction": raw_tvd / mitigated_tvd,
        "negative_mass": -sum(v for v in quasi.values() if v < 0),
        "noise_profile": f"aer.noisy ring8 seed 7, noise x{noise_scale:g} (readout 0.8-3%)",
        "shots": shots,
    }


def measure_accuracy(seed: int = 0) -> dict[str, Any]:
    """The figures the benchmark harness records (about a minute on 2 cores)."""
    zne_only = zne_accuracy(seed)
    zne_readout = zne_accuracy(seed, readout=True)
    zne_gate_noise = zne_accuracy(seed, readout_errors=False)
    rem = rem_accuracy(seed)
    return {
        "zne_error_reduction": zne_only["error_reduction"],
        "zne_readout_error_reduction": zne_readout["error_reduction"],
        "zne_error_reduction_gate_noise_only": zne_gate_noise["error_reduction"],
        "rem_tvd_reduction": rem["tvd_reduction"],
        "noise_profile": (
            f"ZNE: 6-qubit HEA (2 layers, 20 parameter sets, ZZ-chain and X observables) on "
            f"{zne_only['noise_profile']}, Richardson over global folding at 1,3,5; the "
            f"gate-noise-only figure uses {zne_gate_noise['noise_profile']}. REM: GHZ-5 on "
            f"{rem['noise_profile']}"
        ),
        "shots": {"zne": zne_only["shots"], "rem": rem["shots"]},
        "details": {
            "zne": zne_only,
            "zne+readout": zne_readout,
            "zne_gate_noise_only": zne_gate_noise,
            "readout": rem,
        },
    }


# ------------------------------------------------------------------------------- cost
def _best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def measure_cost(seed: int = 0, repeat: int = 3) -> dict[str, Any]:
    """Wall time of prepare + execute + mitigate for one job, unmitigated vs each technique,
    plus the alternatives not taken (mitiq folding + transpile; mitiq.rem)."""
    registry = BackendRegistry({NOISY: ZNE_NOISE_SCALE})
    registry.get(NOISY)
    cache = TranspileCache()
    readout_cache = ReadoutCalibrationCache()
    rng = np.random.default_rng(seed)
    qasm = hea_qasm(6, 2)
    n_params = parse_circuit(qasm).num_parameters
    sets = tuple(tuple(rng.uniform(-1, 1, n_params)) for _ in range(4))
    observables = hea_observables(6)

    def job(mitigation: MitigationSpec, shots: int = 4000) -> float:
        spec = JobSpec(
            "wf-cost",
            qasm,
            parameter_sets=sets,
            observables=observables,
            shots=shots,
            backend=NOISY,
            mitigation=mitigation,
        )

        def run() -> None:
            prepared = prepare(spec, registry, cache, Limits(), readout_cache)
            mitigate(prepared, execute(prepared, registry, 5))

        run()  # warm the caches
        return _best_of(repeat, run)

    ghz = JobSpec("wf-cost-ghz", ghz_qasm(5), shots=4000, backend=NOISY)

    def ghz_job(mitigation: MitigationSpec) -> float:
        spec = JobSpec(
            ghz.workflow_id, ghz.circuit, shots=ghz.shots, backend=NOISY, mitigation=mitigation
        )

        def run() -> None:
            prepared = prepare(spec, registry, cache, Limits(), readout_cache)
            mitigate(prepared, execute(prepared, registry, 5))

        run()
        return _best_of(repeat, run)

    results: dict[str, Any] = {
        "estimator_job": "6-qubit HEA, 4 parameter sets, 2 bases, 4000 shots, aer.noisy x3",
        "unmitigated_s": job(MitigationSpec()),
        "zne_1_3_5_s": job(MitigationSpec(zne=ZneSpec())),
        "readout_s": job(MitigationSpec(readout=True)),
        "zne_readout_s": job(MitigationSpec(zne=ZneSpec(), readout=True)),
        "dd_s": job(MitigationSpec(dynamical_decoupling=True)),
        "ghz5_unmitigated_s": ghz_job(MitigationSpec()),
        "ghz5_readout_s": ghz_job(MitigationSpec(readout=True)),
    }
    backend = registry.get(NOISY)
    results["readout_calibration_miss_s"] = _best_of(
        repeat, lambda: ReadoutCalibrationCache().get(backend)
    )
    results.update(_folding_alternatives(registry, cache, sets[0]))
    results.update(_readout_alternatives(registry, readout_cache))
    return results


def _folding_alternatives(registry, cache, values) -> dict[str, Any]:
    """Per folded circuit: mitiq's fold_global on the bound logical circuit + transpile, vs
    native folding of the transpiled template; and whether the folds survive."""
    from mitiq.zne.scaling import fold_gates_at_random, fold_global

    from workers.circuits.measurement import basis_circuit, without_final_measurements
    from workers.mitigation import zne

    backend = registry.get(NOISY)
    circuit = parse_circuit(hea_qasm(6, 2))
    logical = basis_circuit(without_final_measurements(circuit), "Z" * 6)
    bound = logical.assign_parameters(dict(zip(circuit.parameters, values, strict=True)))
    template, _ = cache.transpile(logical, backend)
    manager = cache.pass_manager(backend)
    fold_global(bound, 3.0)  # import and conversion warm-up
    out: dict[str, Any] = {"template_cx": zne.two_qubit_gate_count(template)}
    for name, fn in (("global", fold_global), ("random_gates", fold_gates_at_random)):
        mitiq_s = _best_of(3, lambda fn=fn: manager.run(fn(bound, 3.0)))
        folded = manager.run(fn(bound, 3.0))
        native_s = _best_of(3, lambda name=name: zne.fold(template, 3.0, name, seed=1))
        native, _ = zne.fold(template, 3.0, name, seed=1)
        out[f"mitiq_{name}_fold_transpile_s"] = mitiq_s
        out[f"mitiq_{name}_cx_after_transpile"] = zne.two_qubit_gate_count(folded)
        out[f"native_{name}_fold_s"] = native_s
        out[f"native_{name}_cx"] = zne.two_qubit_gate_count(native)
    try:
        fold_global(logical, 3.0)
        out["mitiq_parameterized"] = "ok"
    except Exception as exc:  # noqa: BLE001 - the failure is the measurement
        out["mitiq_parameterized"] = type(exc).__name__
    return out


def _readout_alternatives(registry, readout_cache) -> dict[str, Any]:
    """Tensored inverse in numpy (ours) vs mitiq.rem on the same GHZ-5 counts."""
    from mitiq import MeasurementResult
    from mitiq.rem import generate_tensored_inverse_confusion_matrix, mitigate_measurements

    from workers.mitigation.readout import mitigate_distribution

    backend = registry.get(NOISY)
    calibration = readout_cache.get(backend)
    spec = JobSpec("wf-rem-alt", ghz_qasm(5), shots=4000, backend=NOISY)
    prepared = prepare(spec, registry, TranspileCache(), Limits())
    counts = execute(prepared, registry, 3)[0]
    from workers.mitigation.readout import clbit_qubits

    qubits = clbit_qubits(prepared.templates[0])
    numpy_s = _best_of(20, lambda: mitigate_distribution(counts, calibration, qubits))
    bitstrings = [
        [int(b) for b in key] for key, count in sorted(counts.items()) for _ in range(count)
    ]
    # mitiq orders qubits left to right as in the bitstring: clbit 4 ... clbit 0.
    matrices = [calibration.matrix(q) for q in reversed(qubits)]

    def with_mitiq() -> None:
        inverse = generate_tensored_inverse_confusion_matrix(5, matrices)
        mitigate_measurements(MeasurementResult(bitstrings), inverse)

    return {
        "readout_numpy_tensored_s": numpy_s,
        "readout_mitiq_rem_s": _best_of(5, with_mitiq),
    }


def dd_effect(seed: int = 0) -> dict[str, Any]:
    """Raw error of the HEA job with and without dynamical decoupling (no other mitigation)."""
    plain = zne_accuracy(seed, zne=None)
    padded = zne_accuracy(seed, zne=None, dynamical_decoupling=True)
    return {
        "raw_median_error_without_dd": plain["raw_median_error"],
        "raw_median_error_with_dd": padded["raw_median_error"],
        "noise_profile": plain["noise_profile"],
        "shots": plain["shots"],
    }


def main(argv: list[str]) -> None:
    seed = 0
    result: dict[str, Any] = {"accuracy": measure_accuracy(seed)}
    if "--cost" in argv:
        result["cost"] = measure_cost(seed)
        result["dd"] = dd_effect(seed)
    print(json.dumps(result, indent=2, default=float))


if __name__ == "__main__":
    main(sys.argv[1:])
