"""Accuracy of qlane's mitigation on real device noise, next to mitiq's own, same circuits/shots.

    .venv/bin/python -m bench.device_accuracy                  # ibm.torino, writes nothing
    .venv/bin/python -m bench.device_accuracy --record         # + bench/device_accuracy.json
    .venv/bin/python -m bench.device_accuracy --quick          # smoke run, 2 sets, 4000 shots

The job: a 6-qubit hardware-efficient estimator (bench.mitigation_bench.hea_qasm: 2 layers of
ry/rz + a cx chain, 36 angles), 20 parameter sets drawn with numpy.random.default_rng(0) from
U(-pi/2, pi/2), observables sum Z_i Z_i+1 and sum X_i (two measurement bases), 64,000 shots per
circuit, on a device backend (published calibration snapshot, noise scale 1).

qlane: one prepared job with ZNE (global folding at 1, 3, 5, Richardson) and readout
mitigation (tensored, the backend's measured calibration), executed once; the four figures
(raw, ZNE, readout, ZNE+readout) come from `workers.mitigation.combine.mitigate` on those
counts with the matching options (readout alone uses the scale-1 circuits only).

mitiq: for every parameter set and basis, qlane's own scale-1 ISA circuit (the same
transpiled circuit, compacted to its 6 physical qubits) is given to
`mitiq.zne.execute_with_zne(..., RichardsonFactory([1, 3, 5]), fold_global)`, whose executor
places each folded circuit back on the same physical qubits, translates `sxdg` to the device's
gates without optimizing (so mitiq's folds survive) and runs it on the same backend with
64,000 shots. `mitiq.rem.mitigate_measurements` with the tensored inverse of the same
readout calibration does readout mitigation (alone on the scale-1 counts, and inside the ZNE
executor for ZNE+readout). Same circuits, same shots, same backend: the figures differ only
by the mitigation code (and sampling).

A CZ device is used because mitiq's Qiskit conversion rewrites ECR gates (Eagle devices)
into other gates, so mitiq could not fold the very circuit qlane runs there.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
import warnings
from typing import Any

import numpy as np
from qiskit import QuantumCircuit, transpile

from bench.mitigation_bench import BENCH_ZNE, exact_values, hea_observables, hea_qasm
from workers.backends.layout import DeviceTranspileCache
from workers.backends.registry import BackendRegistry
from workers.circuits.parsing import parse_circuit
from workers.cost.model import PriceTable
from workers.execution.preparation import bind_tasks, execute, prepare
from workers.jobs import JobSpec, MitigationSpec
from workers.limits import Limits
from workers.mitigation.combine import mitigate
from workers.mitigation.readout import ReadoutCalibrationCache, clbit_qubits
from workers.seeds import derive_seed

BACKEND = "ibm.torino"
SHOTS = 64_000
PARAMETER_SETS = 20
QUBITS = 6
RESULTS = pathlib.Path(__file__).with_name("device_accuracy.json")
NATIVE = ["cz", "rz", "sx", "x"]


def parameter_sets(seed: int = 0) -> list[tuple[float, ...]]:
    rng = np.random.default_rng(seed)
    count = parse_circuit(hea_qasm(QUBITS, 2)).num_parameters
    return [tuple(float(v) for v in rng.uniform(-np.pi / 2, np.pi / 2, count))
            for _ in range(PARAMETER_SETS)]


def parity_value(counts: dict[str, int], pairs: bool) -> float:
    """sum_i Z_i Z_i+1 (pairs) or sum_i Z_i (measured after the basis change), per shot mean;
    bit i of a key is at position n-1-i."""
    total = sum(counts.values())
    value = 0.0
    for key, count in counts.items():
        bits = [int(b) for b in reversed(key.replace(" ", ""))][:QUBITS]
        z = [1 - 2 * b for b in bits]
        if pairs:
            shot = sum(z[i] * z[i + 1] for i in range(QUBITS - 1))
        else:
            shot = sum(z)
        value += shot * count
    return value / total


def compact(circuit: QuantumCircuit) -> tuple[QuantumCircuit, list[int]]:
    """The circuit on only the qubits it uses (in increasing physical order)."""
    used = sorted({circuit.find_bit(q).index for i in circuit.data for q in i.qubits
                   if i.name != "barrier"})
    small = QuantumCircuit(len(used), circuit.num_clbits)
    where = {physical: k for k, physical in enumerate(used)}
    for instruction in circuit.data:
        if instruction.name == "barrier":
            continue
        qubits = [small.qubits[where[circuit.find_bit(q).index]] for q in instruction.qubits]
        clbits = [small.clbits[circuit.find_bit(c).index] for c in instruction.clbits]
        small.append(instruction.operation, qubits, clbits)
    return small, used


def run_qlane(registry, cache, sets, observables) -> dict[str, Any]:
    spec = JobSpec(
        "wf-device-accuracy", hea_qasm(QUBITS, 2), parameter_sets=tuple(sets),
        observables=observables, shots=SHOTS, backend=BACKEND,
        mitigation=MitigationSpec(zne=BENCH_ZNE, readout=True),
    )
    readout_cache = ReadoutCalibrationCache()
    started = time.perf_counter()
    prepared = prepare(spec, registry, cache, Limits(), readout_cache)
    prepared_at = time.perf_counter()
    counts = execute(prepared, registry, derive_seed("wf-device-accuracy"))
    executed_at = time.perf_counter()
    zne_readout = mitigate(prepared, counts)
    zne_only = mitigate(dataclasses.replace(
        prepared, mitigation=MitigationSpec(zne=BENCH_ZNE)), counts)
    unscaled = prepared.unmitigated_tasks
    scale_one = dataclasses.replace(
        prepared, tasks=[prepared.tasks[i] for i in unscaled],
        mitigation=MitigationSpec(readout=True))
    readout_only = mitigate(scale_one, [counts[i] for i in unscaled])
    done = time.perf_counter()
    return {
        "prepared": prepared,
        "counts": counts,
        "raw": np.array([e.raw_value for e in zne_readout.estimates]),
        "zne": np.array([e.value for e in zne_only.estimates]),
        "readout": np.array([e.value for e in readout_only.estimates]),
        "zne+readout": np.array([e.value for e in zne_readout.estimates]),
        "seconds": {"prepare (transpile, fold, readout calibration)": prepared_at - started,
                    "execute": executed_at - prepared_at,
                    "mitigate (all four variants)": done - executed_at},
        "circuits": len(prepared.tasks),
        "calibration_circuits": 2,
        "calibration_shots": prepared.readout_calibration.shots,
        "readout_calibration": prepared.readout_calibration,
    }


def run_mitiq(registry, qlane: dict[str, Any]) -> dict[str, Any]:
    from mitiq.rem import generate_tensored_inverse_confusion_matrix, mitigate_measurements
    from mitiq.typing import MeasurementResult
    from mitiq.zne import execute_with_zne
    from mitiq.zne.inference import RichardsonFactory
    from mitiq.zne.scaling import fold_global

    backend = registry.get(BACKEND)
    prepared = qlane["prepared"]
    calibration = qlane["readout_calibration"]
    circuits = bind_tasks(prepared)
    executions = {"count": 0, "seconds": 0.0}
    sets = len({task.parameter_set_index for task in prepared.tasks})
    results = {k: np.zeros((sets, 2)) for k in ("raw", "zne", "readout", "zne+readout")}
    started = time.perf_counter()
    for index in prepared.unmitigated_tasks:
        task = prepared.tasks[index]
        pairs = set(task.basis) == {"Z"}  # the ZZ chain in Z, the X sum in X
        slot = (task.parameter_set_index, 0 if pairs else 1)  # (set, observable), as qlane
        # the estimator read from qlane's own counts of this circuit: the same number
        check = parity_value(qlane["counts"][index], pairs)
        assert abs(check - qlane["raw"][2 * slot[0] + slot[1]]) < 1e-9, (check, slot)
        small, physical = compact(circuits[index])
        clbit_physical = clbit_qubits(circuits[index])
        inverse = generate_tensored_inverse_confusion_matrix(
            QUBITS, [calibration.matrix(q) for q in reversed(clbit_physical)])

        def run(circuit: QuantumCircuit, physical=physical, index=index) -> dict[str, int]:
            # translate mitiq's gates (sxdg, ...) to the device's on the 6 qubits, no
            # optimization (folds survive), then place them back on the same physical qubits
            # (folding repeats the same cz pairs, so the coupling holds)
            small_isa = transpile(circuit, basis_gates=NATIVE, optimization_level=0,
                                  seed_transpiler=42)
            wide = QuantumCircuit(backend.num_qubits, circuit.num_clbits)
            wide.compose(small_isa, qubits=physical, clbits=range(circuit.num_clbits),
                         inplace=True)
            isa = wide
            executions["count"] += 1
            seed = derive_seed(f"mitiq:{index}", executions["count"])
            begin = time.perf_counter()
            counts = backend.run([isa], SHOTS, seed)[0]
            executions["seconds"] += time.perf_counter() - begin
            return counts

        def value(counts, pairs=pairs) -> float:
            return parity_value(counts, pairs)

        def rem_value(counts, pairs=pairs, inverse=inverse) -> float:
            bitstrings = [[int(b) for b in key.replace(" ", "")] for key, c in counts.items()
                          for _ in range(c)]
            mitigated = mitigate_measurements(MeasurementResult(bitstrings), inverse)
            out: dict[str, int] = {}
            for row in mitigated.result:
                key = "".join(str(int(b)) for b in row)
                out[key] = out.get(key, 0) + 1
            return parity_value(out, pairs)

        scale_one = run(small)
        results["raw"][slot] = value(scale_one)
        results["readout"][slot] = rem_value(scale_one)
        factory = lambda: RichardsonFactory([1.0, 3.0, 5.0])  # noqa: E731
        results["zne"][slot] = float(execute_with_zne(
            small, lambda c: value(run(c)), factory=factory(), scale_noise=fold_global))
        results["zne+readout"][slot] = float(execute_with_zne(
            small, lambda c: rem_value(run(c)), factory=factory(), scale_noise=fold_global))
    total = time.perf_counter() - started
    return {
        **{k: v.reshape(-1) for k, v in results.items()},
        "seconds": total,
        "seconds_in_backend": executions["seconds"],
        "executions": executions["count"],
    }


def measure(seed: int = 0) -> dict[str, Any]:
    warnings.simplefilter("ignore")
    registry, cache = BackendRegistry(), DeviceTranspileCache()
    sets = parameter_sets(seed)
    observables = hea_observables(QUBITS)
    exact = exact_values(hea_qasm(QUBITS, 2), sets, observables).reshape(-1)
    qlane = run_qlane(registry, cache, sets, observables)
    mitiq = run_mitiq(registry, qlane)
    backend = registry.get(BACKEND)
    table = []
    for technique in ("raw", "zne", "readout", "zne+readout"):
        ours = np.abs(qlane[technique] - exact)
        theirs = np.abs(mitiq[technique] - exact)
        difference = ours - theirs  # paired by parameter set and observable
        table.append({
            "technique": technique,
            "qlane_mean_abs_error": float(np.mean(ours)),
            "mitiq_mean_abs_error": float(np.mean(theirs)),
            # mean and standard error of the paired difference (negative: qlane better);
            # both sides sample their own shots, so a |difference| under ~2 SE is noise
            "qlane_minus_mitiq": float(np.mean(difference)),
            "qlane_minus_mitiq_se": float(np.std(difference, ddof=1) / np.sqrt(len(difference))),
        })
    prepared = qlane["prepared"]
    circuits = qlane["circuits"]
    shots = prepared.shots
    prices = PriceTable()
    execute_s = qlane["seconds"]["execute"]
    cost = {}
    for name in registry.names():
        try:
            cost[name] = prices.estimate(name, circuits + 2, shots, expected_seconds=execute_s)
        except Exception as exc:  # noqa: BLE001 - an unpriced backend is reported as such
            cost[name] = f"not priced ({type(exc).__name__})"
    return {
        "command": "python -m bench.device_accuracy --record",
        "backend": BACKEND,
        "calibration_version": backend.calibration_version,
        "layout": prepared.templates[0].layout.final_index_layout(),
        "job": f"6-qubit HEA (2 layers), {PARAMETER_SETS} parameter sets, observables "
               f"sum ZiZi+1 and sum Xi, {SHOTS} shots per circuit",
        "accuracy": table,
        "qlane": {
            "circuits": circuits, "shots_per_circuit": shots,
            "readout_calibration": f"2 circuits x {qlane['calibration_shots']} shots "
                                   "(cached per backend calibration)",
            "circuits_per_technique": "one job: zne and zne+readout share its 3 circuits per "
                                      "parameter set and basis; raw and readout use the "
                                      "scale-1 ones",
            "seconds": qlane["seconds"],
        },
        "mitiq": {
            "circuits": mitiq["executions"], "shots_per_circuit": SHOTS,
            "readout_calibration": "the same calibration (mitiq.rem takes the matrices)",
            "circuits_per_technique": "raw 1, readout 1 (the raw counts), zne 3, zne+readout 3 "
                                      "per parameter set and basis (zne and zne+readout run "
                                      "their own folded circuits, as mitiq's executor does)",
            "seconds_total": mitiq["seconds"],
            "seconds_outside_the_backend": mitiq["seconds"] - mitiq["seconds_in_backend"],
        },
        "benchmark_job_set_cost_usd": {
            "job": f"{circuits} circuits + 2 readout-calibration circuits, {shots} shots each",
            "expected_seconds_for_time_priced_backends": execute_s,
            "by_backend": cost,
        },
        "seed": seed,
    }


def main(argv: list[str]) -> None:
    global PARAMETER_SETS, SHOTS
    if "--quick" in argv:  # a smoke run: 2 parameter sets, 4000 shots (never recorded)
        PARAMETER_SETS, SHOTS = 2, 4000
        argv = [a for a in argv if a != "--record"]
    result = measure()
    text = json.dumps(result, indent=2, default=float)
    print(text)
    if "--record" in argv:
        RESULTS.write_text(text + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
