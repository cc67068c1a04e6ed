"""Assemble a JobResult record from a job's request, preparation and outcomes."""

from __future__ import annotations

from collections.abc import Sequence

from streams.runtime import package_version
from workers.estimation import ExpectationEstimate
from workers.preparation import PreparedJob


def mitigation_report(request: dict) -> dict:
    """Mitigation is not applied yet: say so, and echo what was asked for."""
    asked = request.get("mitigation") or {}
    requested = [
        name
        for name, on in (
            ("zne", asked.get("zne") is not None),
            ("readout", asked.get("readout", False)),
            ("dynamical_decoupling", asked.get("dynamical_decoupling", False)),
        )
        if on
    ]
    parameters = {"requested": ",".join(requested), "applied": "false"} if requested else {}
    return {
        "technique": "none",
        "parameters": parameters,
        "overhead_circuits": 0,
        "overhead_shots": 0,
    }


def build_result(
    *,
    request: dict,
    prepared: PreparedJob,
    counts: Sequence[dict[str, int]],
    estimates: Sequence[ExpectationEstimate],
    seed_simulator: int,
    timings: dict[str, float],
    completed_at_ms: int,
) -> dict:
    circuits = [
        {
            "parameter_set_index": task.parameter_set_index,
            "parameter_values": list(task.parameter_values),
            "basis": task.basis,
            "shots": prepared.shots,
            "counts": dict(task_counts),
        }
        for task, task_counts in zip(prepared.tasks, counts, strict=True)
    ]
    expectations = [
        {
            "parameter_set_index": estimate.parameter_set_index,
            "observable_index": estimate.observable_index,
            "observable": prepared.observables[estimate.observable_index].label(),
            "value": estimate.value,
            "std_error": estimate.std_error,
            "raw_value": estimate.value,
            "raw_std_error": estimate.std_error,
        }
        for estimate in estimates
    ]
    return {
        "workflow_id": request["workflow_id"],
        "parent_workflow_id": request.get("parent_workflow_id"),
        "status": "succeeded",
        "mode": "quantum",
        "fallback_reason": None,
        "error": None,
        "circuits": circuits,
        "expectations": expectations,
        "mitigation": mitigation_report(request),
        "shots_used": prepared.shots * len(prepared.tasks),
        "provenance": {
            "backend": prepared.backend,
            "calibration_version": prepared.calibration_version,
            "optimization_level": prepared.optimization_level,
            "seed_transpiler": prepared.seed_transpiler,
            "seed_simulator": seed_simulator,
            "transpile_cache_hit": prepared.transpile_cache_hit,
            "qlane_version": package_version("qlane"),
            "qiskit_version": package_version("qiskit"),
            "qiskit_aer_version": package_version("qiskit-aer"),
            "mitiq_version": package_version("mitiq"),
        },
        "timings": timings,
        "completed_at_ms": completed_at_ms,
    }
