"""Qiskit's pub results rebuilt from a workflow's JobResult: the sampler's BitArrays per
register and the estimator's expectation values, in the pub's broadcast shape, with the
mitigation report in their metadata."""

from __future__ import annotations

import math

import numpy as np
from qiskit.primitives.containers import (
    BitArray,
    DataBin,
    PubResult,
    SamplerPubResult,
)
from qiskit.primitives.containers.estimator_pub import EstimatorPub
from qiskit.primitives.containers.sampler_pub import SamplerPub

from workers.seeds import job_seed


def empty_sampler_result(pub: SamplerPub) -> SamplerPubResult:
    data = DataBin(**{creg.name: BitArray(
        np.zeros(pub.shape + (pub.shots, (creg.size + 7) // 8), dtype=np.uint8), creg.size)
        for creg in pub.circuit.cregs}, shape=pub.shape)
    return SamplerPubResult(data, metadata={"shots": pub.shots,
                                            "circuit_metadata": pub.circuit.metadata})


def empty_estimator_result(pub: EstimatorPub) -> PubResult:
    return PubResult(DataBin(evs=np.zeros(pub.shape), stds=np.zeros(pub.shape),
                             shape=pub.shape),
                     metadata={"target_precision": pub.precision, "shots": 0,
                               "circuit_metadata": pub.circuit.metadata})


def joint_counts_bits(counts: dict[str, int], num_bits: int) -> BitArray:
    """The joint counts (keys possibly space-separated by register) as one BitArray."""
    joined = {key.replace(" ", ""): value for key, value in counts.items()}
    return BitArray.from_counts(joined, num_bits=num_bits)


def register_offsets(cregs, layout: list[dict]) -> list[tuple[int, int]]:
    """(first bit, size) in the joint counts of each of the circuit's registers. The program
    sent declares them in the circuit's order, but Qiskit's OpenQASM 3 exporter renames a
    register whose name is a keyword or a gate (`creg`, `z`, `output`, ...; `creg` becomes
    `creg_0`), so the worker's names may differ: then the registers are matched by position,
    and anything else that does not match is an error, never a register of zeros."""
    offsets, start = [], 0
    for register in layout:
        offsets.append((start, register["size"]))
        start += register["size"]
    by_name = {register["name"]: offset for register, offset in zip(layout, offsets,
                                                                     strict=True)}
    if all(creg.name in by_name for creg in cregs):
        chosen = [by_name[creg.name] for creg in cregs]
    elif len(layout) == len(cregs):
        chosen = offsets
    elif len(layout) == len(cregs) + 1 and layout[-1]["name"] == "meas":
        # A circuit that measures nothing: the worker measured every qubit into a `meas`
        # register of its own (counts_circuit); the circuit's registers read zeros.
        chosen = offsets[:-1]
    else:
        raise ValueError(f"the result's registers {[r['name'] for r in layout]} do not match "
                         f"the circuit's {[creg.name for creg in cregs]}")
    for creg, (_, size) in zip(cregs, chosen, strict=True):
        if size != creg.size:
            raise ValueError(f"register {creg.name}: {size} bits in the result, "
                             f"{creg.size} in the circuit")
    return chosen


def shots_repeated(pub: SamplerPub) -> int:
    """How many elements of the pub's shape one circuit's shots stand for: all of them for
    a circuit without parameters under a shaped binding (it runs once, with the shots of
    every element, independent samples split in order), else 1."""
    size = math.prod(pub.shape)
    return size if pub.circuit.num_parameters == 0 and size > 1 else 1


def sampler_pub_result(pub: SamplerPub, result: dict) -> SamplerPubResult:
    circuits = sorted(
        (c for c in result["circuits"] if c["scale_factor"] == 1.0),
        key=lambda c: c["parameter_set_index"],
    )
    shape = pub.shape
    size = math.prod(shape)
    # A circuit without parameters under a shaped binding ran once, for all its elements.
    repeats = shots_repeated(pub)
    if len(circuits) * repeats != max(size, 1):
        raise ValueError(f"{result['workflow_id']}: {len(circuits)} circuits for shape {shape}")
    cregs = pub.circuit.cregs
    arrays = {creg.name: np.zeros(shape + (pub.shots, (creg.size + 7) // 8), dtype=np.uint8)
              for creg in cregs}
    # The simulator's seed orders the shots too: a `seed` in the options repeats the
    # BitArrays, not only their counts, as Qiskit's seeded samplers do (each call's job id
    # differs, and shuffled by it two seed=7 runs gave one order each).
    seed = (result.get("provenance") or {}).get("seed_simulator")
    rng = np.random.default_rng(job_seed(result["workflow_id"], seed))
    for number, circuit in enumerate(circuits if cregs else ()):  # no register: no data
        layout = circuit.get("registers") or [{"name": c.name, "size": c.size} for c in cregs]
        total = sum(r["size"] for r in layout)
        joint = joint_counts_bits(circuit["counts"], total)
        joint = BitArray(joint.array[rng.permutation(joint.num_shots)], total)
        offsets = register_offsets(cregs, layout)
        for part in range(repeats):
            flat = number * repeats + part
            index = np.unravel_index(flat, shape) if shape else ()
            shots = slice(part * pub.shots, (part + 1) * pub.shots)
            for creg, (start, size_bits) in zip(cregs, offsets, strict=True):
                bits = joint.slice_bits(range(start, start + size_bits)).array
                arrays[creg.name][index] = bits[shots]
    data = DataBin(**{c.name: BitArray(arrays[c.name], c.size) for c in cregs}, shape=shape)
    return SamplerPubResult(data, metadata={
        "shots": pub.shots, "circuit_metadata": pub.circuit.metadata,
        "workflow_id": result["workflow_id"], **mitigation_metadata(result),
    })


def estimator_pub_result(pub: EstimatorPub, grids, result: dict) -> PubResult:
    parameter_grid, observable_grid = grids
    found = {(e["parameter_set_index"], e["observable_index"]): (e["value"], e["std_error"])
             for e in result["expectations"]}
    evs = np.zeros(pub.shape, dtype=np.float64)
    stds = np.zeros(pub.shape, dtype=np.float64)
    for index in np.ndindex(*pub.shape):
        evs[index], stds[index] = found[(int(parameter_grid[index]),
                                         int(observable_grid[index]))]
    shots = max((c["shots"] for c in result["circuits"]), default=0)
    return PubResult(DataBin(evs=evs, stds=stds, shape=pub.shape), metadata={
        "target_precision": pub.precision, "shots": shots,
        "circuit_metadata": pub.circuit.metadata, "workflow_id": result["workflow_id"],
        **mitigation_metadata(result),
    })


def mitigation_metadata(result: dict) -> dict:
    """The JobResult's mitigation report, when a technique was applied: `mitigation`
    (technique and parameters) and, from a worker whose stds leave a source of error out,
    `std_error_scope` (one random fold per factor that is not an odd integer: the stds were
    a fifth of the run-to-run spread, and nothing in the PubResult said so; a red-team run)."""
    report = result.get("mitigation") or {}
    parameters = dict(report.get("parameters") or {})
    technique = report.get("technique", "none")
    if technique == "none" and not parameters:
        return {}
    # A technique asked for and not applied says so in its parameters ("dd": "not applied:
    # the backend target has no gate durations"): dropped with technique "none", a user who
    # asked for it could not tell (a red-team run).
    found = {"mitigation": {"technique": technique, "parameters": parameters}}
    if "std_error_scope" in parameters:
        found["std_error_scope"] = parameters["std_error_scope"]
    return found

