"""Coverage of reported standard errors, raw and readout-mitigated, in-process.

A 4-qubit circuit on `aer.noisy` (noise x1) with five observables (correlated terms in one
basis, two bases, an identity part), run `trials` times with a fresh readout-calibration
seed per trial (as a user meets across calibration versions). "Truth" for raw estimates is
the same job at 1e11 shots; for readout-mitigated ones, the same transpiled circuits on the
device without readout errors. Coverage = share of trials with |estimate - truth| <= 2 SE
(95 % for honest error bars).

    PYTHONPATH=. .venv/bin/python -m bench.readout_coverage --shots 1000000 --trials 300
"""

from __future__ import annotations

import argparse

import numpy as np

import workers.mitigation.readout as readout
from workers.backends.aer import NOISY, BackendRegistry
from workers.backends.calibration import generate_snapshot
from workers.circuits.transpile import TranspileCache
from workers.execution.preparation import execute, prepare
from workers.jobs import JobSpec, MitigationSpec, parse_observable
from workers.limits import Limits
from workers.mitigation.combine import mitigate
from workers.mitigation.readout import ReadoutCalibrationCache

PROGRAM = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[4];
ry(0.7) q[0]; ry(-1.1) q[1]; ry(0.4) q[2]; ry(2.0) q[3];
cx q[0],q[1]; cx q[1],q[2]; cx q[2],q[3];
rz(0.3) q[1]; ry(0.9) q[2]; rx(0.5) q[0];
cx q[3],q[0];
"""
OBSERVABLES = ("ZZII:0.5+IZZI:-1.0+ZIIZ:2+IIIZ:0.8", "XXXX:1.5+IIXX:0.7+XIII:1",
               "ZIII+IIIX:0.5", "ZZZZ", "IIII:3+ZIII:-2")
EXACT_SHOTS = 10**11
LIMITS = Limits(max_shots=10**12)


def job(workflow_id: str, shots: int, readout_on: bool, program: str = PROGRAM,
        observables: tuple[str, ...] = OBSERVABLES) -> JobSpec:
    return JobSpec(workflow_id, program, shots=shots, backend=NOISY,
                   observables=tuple(parse_observable(o) for o in observables),
                   mitigation=MitigationSpec(readout=readout_on))


def z_score(estimate: float, truth: float, std_error: float) -> float:
    """(estimate - truth) / SE; an SE of 0 misses unless the estimate is the truth."""
    if std_error == 0:
        return 0.0 if estimate == truth else float("inf")
    return (estimate - truth) / std_error


def measure(shots: int, trials: int, program: str = PROGRAM,
            observables: tuple[str, ...] = OBSERVABLES) -> dict:
    snapshot = generate_snapshot()
    noisy = BackendRegistry({NOISY: 1.0}, calibration=snapshot)
    zeros = (0.0,) * snapshot.num_qubits
    no_readout = BackendRegistry({NOISY: 1.0}, calibration=snapshot.with_changes(
        readout_p1_given_0=zeros, readout_p0_given_1=zeros))
    cache = TranspileCache()
    exact = prepare(job("exact", EXACT_SHOTS, False, program, observables), noisy, cache,
                    LIMITS)
    raw_truth = np.array([e.raw_value for e in mitigate(exact, execute(exact, noisy, 1)).estimates])
    exact = prepare(job("exact-readout", EXACT_SHOTS, True, program, observables), noisy,
                    cache, LIMITS, ReadoutCalibrationCache())
    mitigated_truth = np.array([e.raw_value for e in mitigate(
        exact, execute(exact, no_readout, 1)).estimates])
    seed_of = readout.calibration_seed
    raw_z, mitigated_z = [], []
    try:
        for trial in range(trials):
            readout.calibration_seed = lambda b, v, t=trial: seed_of(b, v) + 7919 * t
            prepared = prepare(job(f"wf-{trial}", shots, True, program, observables), noisy,
                               cache, LIMITS, ReadoutCalibrationCache())
            outcome = mitigate(prepared, execute(prepared, noisy, 1000 + 17 * trial))
            raw_z.append([z_score(e.raw_value, t, e.raw_std_error)
                          for e, t in zip(outcome.estimates, raw_truth, strict=True)])
            mitigated_z.append([z_score(e.value, t, e.std_error)
                                for e, t in zip(outcome.estimates, mitigated_truth, strict=True)])
    finally:
        readout.calibration_seed = seed_of
    raw, mitigated = np.array(raw_z), np.array(mitigated_z)
    return {
        "shots": shots, "trials": trials,
        "observables": [
            {"observable": o,
             "raw_coverage": float(np.mean(np.abs(raw[:, i]) <= 2)),
             "raw_sd_z": float(np.std(raw[:, i])),
             "readout_coverage": float(np.mean(np.abs(mitigated[:, i]) <= 2)),
             "readout_sd_z": float(np.std(mitigated[:, i])),
             "readout_mean_z": float(np.mean(mitigated[:, i]))}
            for i, o in enumerate(observables)],
    }


def report(result: dict) -> None:
    print(f"shots {result['shots']}, trials {result['trials']}")
    for row in result["observables"]:
        print(f"{row['observable']:<36} raw {row['raw_coverage']:.3f} (sd z "
              f"{row['raw_sd_z']:.2f})  readout {row['readout_coverage']:.3f} (sd z "
              f"{row['readout_sd_z']:.2f}, mean z {row['readout_mean_z']:+.2f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shots", type=int, default=1_000_000)
    parser.add_argument("--trials", type=int, default=300)
    args = parser.parse_args()
    report(measure(args.shots, args.trials))


if __name__ == "__main__":
    main()
