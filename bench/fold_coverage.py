"""Whether ZNE's standard errors cover the spread of its values under random gate folding.

At a scale factor that is not an odd integer, random gate folding draws which gates get one
more fold, and that choice moves the extrapolated value by more than the shots' error. A job
now averages `RANDOM_FOLDS` folds per such factor and takes their spread into its standard
error (workers/mitigation/combine.py `_fold_average`); with one fold (`--folds 1`, the code
before) the standard error measured the shots of that fold only. Each trial is one workflow
id (its own folds and simulator seed) of the same 4-qubit job on `aer.noisy` at noise x2,
prepared, run and mitigated in-process. The reference value is the mean over the trials, so
the table gives, per observable, the run-to-run sd of the values against the mean reported
SE (1.0 for honest error bars) and the share of trials within 2 SE of the reference.

    PYTHONPATH=. .venv/bin/python -m bench.fold_coverage --trials 60 --shots 20000
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import workers.execution.preparation as preparation
from bench.readout_coverage import PROGRAM  # the same 4-qubit circuit
from workers.backends.aer import NOISY, BackendRegistry
from workers.circuits.transpile import TranspileCache
from workers.execution.preparation import execute, prepare
from workers.jobs import JobSpec, MitigationSpec, ZneSpec, parse_observable
from workers.limits import Limits
from workers.mitigation.combine import mitigate

OBSERVABLES = ("ZIII", "IIZZ")


def trial_values(factors: tuple[float, ...], folds: int, shots: int, trials: int) -> dict:
    preparation.RANDOM_FOLDS = folds
    registry = BackendRegistry({NOISY: 2.0})
    cache = TranspileCache()
    values, errors = [], []
    started = time.perf_counter()
    for trial in range(trials):
        spec = JobSpec(f"fold-coverage-{trial}", PROGRAM, shots=shots, backend=NOISY,
                       observables=tuple(parse_observable(o) for o in OBSERVABLES),
                       mitigation=MitigationSpec(
                           zne=ZneSpec(factors, "random_gates", "richardson")))
        prepared = prepare(spec, registry, cache, Limits())
        outcome = mitigate(prepared, execute(prepared, registry, 1000 + trial))
        values.append([e.value for e in outcome.estimates])
        errors.append([e.std_error for e in outcome.estimates])
    values, errors = np.array(values), np.array(errors)
    reference = values.mean(axis=0)
    return {
        "factors": list(factors), "folds": folds, "shots": shots, "trials": trials,
        "circuits_per_job": len(prepared.tasks),
        "seconds_per_job": round((time.perf_counter() - started) / trials, 2),
        "observables": {
            name: {"sd_of_values": round(float(values[:, i].std(ddof=1)), 4),
                   "mean_reported_se": round(float(errors[:, i].mean()), 4),
                   "sd_over_se": round(float(values[:, i].std(ddof=1) / errors[:, i].mean()), 2),
                   "within_2_se": round(float(np.mean(
                       np.abs(values[:, i] - reference[i]) <= 2 * errors[:, i])), 3)}
            for i, name in enumerate(OBSERVABLES)},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=60)
    parser.add_argument("--shots", type=int, default=20000)
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    rows = [trial_values(factors, folds, args.shots, args.trials)
            for factors in ((1.0, 1.5, 2.0), (1.0, 2.0, 3.0))
            for folds in args.folds]
    for row in rows:
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
