"""Combine a prepared job's measured counts into mitigated results (no Kafka).

`prepare` (workers/execution/preparation.py) expanded the job before execution;
`mitigate` undoes the expansion after it:

1. raw estimates: the tasks at ZNE scale 1, no correction (what `estimate_expectations`
   gives for the same job);
2. readout mitigation: every estimate (at every scale) is read through the tensored inverse
   of the job's confusion matrices, per shot (workers/mitigation/readout.py); counts jobs also get a
   mitigated quasi-distribution per scale-1 task;
3. ZNE: the (corrected) estimates at each scale factor are extrapolated to zero noise with
   mitiq's factories, standard errors propagated (workers/mitigation/zne.py).

Dynamical decoupling acts on the circuits only; here it is reported.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from workers.errors import ResultTooLarge
from workers.execution.preparation import PreparedJob, folds_at
from workers.jobs import ObservableSpec, PauliTerm
from workers.mitigation import ddd, zne
from workers.mitigation.estimation import (
    ExpectationEstimate,
    ParityTable,
    estimate_tasks,
    terms_by_basis,
)
from workers.mitigation.readout import (
    MAX_DENSE_BITS,
    calibration_variance,
    clbit_qubits,
    mitigate_distribution,
    parity_tables,
    register_qubits,
)

TECHNIQUE_ORDER = ("zne", "readout", "dd")


@dataclass(frozen=True)
class MitigatedEstimate:
    parameter_set_index: int
    observable_index: int
    value: float  # mitigated (equal to raw_value when no technique changes it)
    std_error: float
    raw_value: float  # unmitigated: scale 1, no readout correction
    raw_std_error: float


@dataclass
class MitigationOutcome:
    estimates: list[MitigatedEstimate]  # by parameter set, then observable; [] for counts jobs
    report: dict  # shaped like JobResult's MitigationReport record
    # Per scale-1 task: readout-mitigated quasi-distribution (counts jobs with readout
    # mitigation), else {}.
    mitigated_probabilities: list[dict[str, float]] = field(default_factory=list)


# The least a mitigated probability takes in a JobResult besides its bitstring: its length
# (a varint) and its value (an Avro double).
DISTRIBUTION_ENTRY_BYTES = 9


def mitigate(prepared: PreparedJob, counts: list[dict[str, int]],
             distributions_allowed_bytes: int | None = None) -> MitigationOutcome:
    """Mitigated estimates, the mitigation report and, for counts jobs, mitigated
    distributions. `counts` are per task, in task order (what `execute` returns).

    `distributions_allowed_bytes`: ResultTooLarge as soon as the mitigated distributions
    would take more of a result than that, instead of after all of them."""
    if len(counts) != len(prepared.tasks):
        raise ValueError(f"{len(counts)} counts for {len(prepared.tasks)} tasks")
    spec = prepared.mitigation
    calibration = prepared.readout_calibration if spec.readout else None
    # Per basis, the scale each factor's folds reached (none without ZNE)
    reached = _reached_by_basis(prepared)
    blocks: dict[float, list[int]] = {}
    for index, task in enumerate(prepared.tasks):
        blocks.setdefault(task.scale_factor, []).append(index)
    unmitigated = blocks.get(1.0, [])
    parameters: dict[str, str] = {}
    applied: list[str] = []

    estimates: list[MitigatedEstimate] = []
    if prepared.observables:
        raw = estimate_tasks(prepared, counts, unmitigated)
        tables, physical = (_tables(prepared, calibration) if calibration is not None
                            else (None, None))
        if spec.zne is not None:
            final = _extrapolate(prepared, raw, counts, blocks, tables, physical, reached,
                                 parameters, calibration)
        else:
            final = [(e.value, _with_calibration(e.std_error, calibration, e.readout_gradient))
                     for e in estimate_tasks(prepared, counts, unmitigated, tables, physical)]
        estimates = [
            MitigatedEstimate(
                r.parameter_set_index, r.observable_index, value, std_error, r.value, r.std_error
            )
            for r, (value, std_error) in zip(raw, final, strict=True)
        ]

    if spec.zne is not None:
        applied.append("zne")
        parameters.update(
            {
                "scale_factors": ",".join(repr(s) for s in spec.zne.scale_factors),
                "folding": spec.zne.folding,
                "extrapolation": spec.zne.extrapolation,
                "folded_native": "true",
            }
        )
        parameters["scale_factors_reached"] = " | ".join(sorted({
            ",".join(f"{by_factor.get(s, s):.4g}" for s in spec.zne.scale_factors)
            for by_factor in list(reached.values()) or [{}]}))
        if spec.zne.extrapolation == "polynomial":
            parameters["polynomial_order"] = str(zne.polynomial_order(len(spec.zne.scale_factors)))
        if spec.zne.folding == "random_gates":
            parameters["fold_seed"] = str(prepared.fold_seed)
            folds = max(folds_at(spec.zne, factor) for factor in spec.zne.scale_factors)
            if folds > 1:
                parameters["random_folds"] = str(folds)

    probabilities: list[dict[str, float]] = [{} for _ in unmitigated]
    if calibration is not None:
        applied.append("readout")
        parameters.update(
            {
                "readout_method": "tensored_inverse",
                "readout_calibration_version": calibration.calibration_version,
                # 266 on ibm_runtime.torino, a qubit at a time: it said 2 (a red-team run)
                "readout_calibration_circuits": str(calibration.circuits),
                "readout_calibration_shots": str(calibration.shots),
            }
        )
        if not prepared.observables:
            skipped = False
            taken = 0
            for position, index in enumerate(unmitigated):
                template = prepared.templates[prepared.tasks[index].template_index]
                quasi = mitigate_distribution(counts[index], calibration, clbit_qubits(template))
                skipped |= quasi is None
                probabilities[position] = quasi or {}
                taken += sum(len(key.encode()) + DISTRIBUTION_ENTRY_BYTES
                             for key in probabilities[position])
                if distributions_allowed_bytes is not None and \
                        taken > distributions_allowed_bytes:
                    # A quasi-distribution spreads over far more bitstrings than its counts
                    # (about 200 for 2 outcomes of 16 bits): 1,000 of them made a 5.3 MB
                    # result, refused only after 7 s of corrections (a red-team run).
                    raise ResultTooLarge(
                        f"the readout-corrected distributions take more than the "
                        f"{max(distributions_allowed_bytes, 0)} bytes a record leaves them "
                        f"after {position + 1} of {len(unmitigated)} circuits: fewer "
                        "circuits or measured bits, or readout mitigation on an Estimator "
                        "job instead")
            if skipped:
                parameters["readout_distribution"] = (
                    f"not computed above {MAX_DENSE_BITS} measured bits"
                )
    elif spec.readout:
        parameters["readout"] = "not applied: the prepared job holds no readout calibration"

    if spec.dynamical_decoupling:
        if prepared.dd_applied:
            applied.append("dd")
            parameters.update({"dd_sequence": ddd.DD_SEQUENCE, "dd_schedule": "alap"})
        else:
            parameters["dd"] = "not applied: the backend target has no gate durations"

    overhead = len(prepared.tasks) - len(unmitigated)
    report = {
        "technique": "+".join(t for t in TECHNIQUE_ORDER if t in applied) or "none",
        "parameters": parameters,
        "overhead_circuits": overhead,
        "overhead_shots": overhead * prepared.shots,
    }
    return MitigationOutcome(estimates, report, probabilities)


def _tables(prepared: PreparedJob, calibration
            ) -> tuple[dict[int, ParityTable], dict[int, list[int | None]]]:
    """Per task: readout-corrected per-qubit values, by logical qubit of the basis register,
    and the physical qubit each logical qubit was read on."""
    by_template: dict[int, tuple[ParityTable, list[int | None]]] = {}
    tables, physical = {}, {}
    for index, task in enumerate(prepared.tasks):
        if task.template_index not in by_template:
            template = prepared.templates[task.template_index]
            # The basis register is the one added last (Qiskit prints it leftmost).
            qubits = register_qubits(template, template.cregs[-1].name)
            by_template[task.template_index] = (parity_tables(calibration, qubits), qubits)
        tables[index], physical[index] = by_template[task.template_index]
    return tables, physical


def _folds(prepared: PreparedJob, indices: list[int]) -> list[list[int]]:
    """A scale's task indices per random fold (one list when its fold is fixed): prepare
    makes a fold's tasks for every parameter set and basis, then the next fold's, so the
    k-th task of a (parameter set, basis) is fold k's."""
    folds: list[list[int]] = []
    seen: dict[tuple[int, str], int] = {}
    for index in indices:
        task = prepared.tasks[index]
        key = (task.parameter_set_index, task.basis)
        fold = seen[key] = seen.get(key, -1) + 1
        if fold == len(folds):
            folds.append([])
        folds[fold].append(index)
    return folds


def _fold_average(by_fold: list[list[ExpectationEstimate]]) -> list[ExpectationEstimate]:
    """Per (parameter set, observable), the mean of its random folds' estimates, with the
    standard error of that mean from their spread: the choice of folded gates moves the
    value by more than the shots' error (one fold gave stds a fifth of the run-to-run
    spread at factors 1, 1.5, 2: a red-team run). The spread is measured with K - 1 degrees
    of freedom, so the error is never put below what the shots alone give."""
    if len(by_fold) == 1:
        return by_fold[0]
    count = len(by_fold)
    averaged = []
    for series in zip(*by_fold, strict=True):
        values = [estimate.value for estimate in series]
        mean = sum(values) / count
        spread = sum((value - mean) ** 2 for value in values) / (count - 1)
        shots_only = sum(estimate.std_error**2 for estimate in series) / count
        gradient: dict[tuple[int, int], float] = {}
        for estimate in series:
            for key, slope in (estimate.readout_gradient or {}).items():
                gradient[key] = gradient.get(key, 0.0) + slope / count
        first = series[0]
        averaged.append(ExpectationEstimate(
            first.parameter_set_index, first.observable_index, mean,
            math.sqrt(max(spread, shots_only) / count),
            gradient if first.readout_gradient is not None else None))
    return averaged


def _with_calibration(std_error: float, calibration,
                      gradient: dict[tuple[int, int], float] | None) -> float:
    """A readout-corrected estimate's standard error with the calibration's own sampling
    error in it (`readout.calibration_variance`)."""
    if calibration is None or not gradient:
        return std_error
    return math.sqrt(std_error**2 + calibration_variance(calibration, gradient))


def _extrapolate(
    prepared: PreparedJob,
    raw: list[ExpectationEstimate],
    counts: list[dict[str, int]],
    blocks: dict[float, list[int]],
    tables,
    physical,
    reached: dict[str, dict[float, float]],
    parameters: dict[str, str],
    calibration=None,
) -> list[tuple[float, float]]:
    """Each observable extrapolated to zero noise basis by basis: the terms a measurement
    basis reads are extrapolated at the scales that basis's folds reached, and the parts
    (independent runs) added. One abscissa for every basis (their mean) put ZZI of GHZ-3,
    read where folds reached 1, 1.67, 2.33, at 1, 1.5, 2.17 beside XXX's 1, 1.33, 2: 1.053 +-
    0.009 for the 1.006 +- 0.007 it gave alone (a red-team run). A basis without a noisy
    gate has nothing to fold: its part is its scale-1 value."""
    options = prepared.mitigation.zne
    assert options is not None
    parts, part_bases, identities, pieces = _split_by_basis(prepared)
    split = dataclasses.replace(prepared, observables=tuple(parts))
    by_scale = {
        scale: _fold_average([estimate_tasks(split, counts, fold, tables, physical)
                              for fold in _folds(prepared, indices)])
        for scale, indices in blocks.items()
    }
    factors = list(options.scale_factors)
    method = options.extrapolation
    weights: dict[tuple[float, ...], object] = {}
    fell_back: set[tuple[int, int]] = set()  # (parameter set, part) fitted linearly
    extrapolated: dict[tuple[int, int], tuple[float, float, dict]] = {}
    for position, base in enumerate(by_scale[1.0]):
        part = base.observable_index
        at = tuple(reached.get(part_bases[part], {}).get(s, s) for s in factors)
        if len(set(at)) == 1 or not any(term.coeff for term in parts[part].terms):
            # Nothing folded in its basis, or nothing to fit (every coefficient 0).
            value, std_error, sensitivity, series = base.value, base.std_error, [1.0], [base]
        else:
            series = [by_scale[s][position] for s in factors]
            if method != "exponential" and at not in weights:
                weights[at] = zne.linear_weights(method, at)
            result = zne.extrapolate(method, at, [e.value for e in series],
                                     [e.std_error for e in series], asymptote=0.0,
                                     weights=weights.get(at))
            if result.fallback:
                fell_back.add((base.parameter_set_index, part))
            value, std_error, sensitivity = result.value, result.std_error, result.sensitivity
        # The scales share one calibration: its error moves them together, so it enters
        # through the fit's sensitivity to each scale's value, not scale by scale.
        shared: dict[tuple[int, int], float] = {}
        for weight, estimate in zip(sensitivity, series, strict=False):
            for key, slope in (estimate.readout_gradient or {}).items():
                shared[key] = shared.get(key, 0.0) + weight * slope
        extrapolated[(base.parameter_set_index, part)] = (value, std_error, shared)
    out = []
    for estimate in raw:
        value, variance = identities[estimate.observable_index], 0.0
        gradient: dict[tuple[int, int], float] = {}
        for part in pieces[estimate.observable_index]:
            part_value, part_error, part_shared = extrapolated[
                (estimate.parameter_set_index, part)]
            value += part_value
            variance += part_error**2
            for key, slope in part_shared.items():
                gradient[key] = gradient.get(key, 0.0) + slope
        out.append((value, _with_calibration(math.sqrt(variance), calibration, gradient)))
    if method == "exponential":  # estimates (parameter set, observable) with a part that fell back
        parameters["exponential_fallbacks"] = str(sum(
            any((estimate.parameter_set_index, part) in fell_back
                for part in pieces[estimate.observable_index]) for estimate in raw))
    return out


def _split_by_basis(prepared: PreparedJob) -> tuple[
        list[ObservableSpec], list[str], list[float], list[list[int]]]:
    """The observables' non-identity terms grouped by the measurement basis that reads them
    (as estimation reads them: the first basis of a parameter set that covers a term): the
    parts, each part's basis, each observable's identity part, and its parts' indices."""
    first_set = prepared.tasks[prepared.unmitigated_tasks[0]].parameter_set_index
    bases = tuple(prepared.tasks[i].basis for i in prepared.unmitigated_tasks
                  if prepared.tasks[i].parameter_set_index == first_set)
    parts: list[ObservableSpec] = []
    part_bases: list[str] = []
    identities: list[float] = []
    pieces: list[list[int]] = []
    for observable in prepared.observables:
        identity, by_position = terms_by_basis(observable, bases, first_set)
        identities.append(identity)
        pieces.append([])
        for position, paulis in sorted(by_position.items()):
            pieces[-1].append(len(parts))
            parts.append(ObservableSpec(tuple(PauliTerm(p, c) for p, c in paulis.items())))
            part_bases.append(bases[position])
    return parts, part_bases, identities, pieces


def _reached_by_basis(prepared: PreparedJob) -> dict[str, dict[float, float]]:
    """Per measurement basis, per asked scale factor, the scale its folded templates reached
    (`PreparedJob.reached_scales`; the mean over random folds). Empty for a job prepared
    before the scales were recorded: extrapolated at the factors asked."""
    by_basis: dict[str, dict[float, list[float]]] = {}
    for task in prepared.tasks:
        if task.template_index < len(prepared.reached_scales):
            by_basis.setdefault(task.basis, {}).setdefault(task.scale_factor, []).append(
                prepared.reached_scales[task.template_index])
    return {basis: {s: sum(v) / len(v) for s, v in by_factor.items()} | {1.0: 1.0}
            for basis, by_factor in by_basis.items()}

