"""An Estimator pub split by the observables its parameter sets need.

A workflow measures every parameter set in every basis of all its observables (the worker's
product). A pub whose broadcast pairs parameter sets with observables (parameter values of
shape (N, p) against N observables: element i is set i with observable i) needs far less:
sent whole, a 64-element pub ran 4,096 circuits for 64 and was charged for all of them
before its result was refused as too large (a red-team run). Here the parameter sets are
grouped by the observables their elements read; each group is one workflow measuring only
those, when that runs fewer circuits than the whole pub. The result is put back together in
the pub's broadcast shape (`merged_result`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from qiskit.primitives.containers import DataBin, PubResult

from workers.circuits.measurement import measurement_bases
from workers.jobs import ObservableSpec, PauliTerm
from workers.seeds import derive_seed


@dataclass(frozen=True)
class PubPart:
    """What a part's result is rebuilt from: the fields of EstimatorPub that
    `estimator_pub_result` and the adaptive plan read, for the part's own shape."""

    circuit: object
    shape: tuple[int, ...]
    precision: float


@dataclass(frozen=True)
class Split:
    """A pub's parts, and where each element of the pub's shape is in them."""

    parts: list[tuple[PubPart, dict, tuple[np.ndarray, np.ndarray]]]  # part, request, grids
    part_of: np.ndarray  # pub shape -> the part holding the element
    index_in_part: np.ndarray  # pub shape + (2,) -> its (set, observable) in that part


def measured_circuits(parameter_sets: int, observables: list[dict]) -> int:
    """Circuits a request runs: a parameter set per basis of its observables, as the worker
    groups them (`measurement_bases`; one basis when none)."""
    specs = [ObservableSpec(tuple(PauliTerm(term["pauli"], term["coeff"])
                                  for term in observable["terms"]))
             for observable in observables]
    return max(parameter_sets, 1) * max(len(measurement_bases(specs)), 1)


def split_pub(pub, request: dict, grids: tuple[np.ndarray, np.ndarray]) -> Split | None:
    """The pub's request split by the observables each parameter set's elements read, or
    None when one request runs no more circuits than the parts would."""
    parameter_grid, observable_grid = grids
    sets = request["parameter_sets"]
    needed: dict[int, set[int]] = defaultdict(set)
    for index in np.ndindex(*pub.shape):
        needed[int(parameter_grid[index])].add(int(observable_grid[index]))
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for parameter_set, observables in sorted(needed.items()):
        groups[tuple(sorted(observables))].append(parameter_set)
    if len(groups) < 2:
        return None
    observables = request["observables"]
    whole = measured_circuits(len(sets), observables)
    apart = sum(measured_circuits(len(members) if sets else 0,
                                  [observables[o] for o in wanted])
                for wanted, members in groups.items())
    if apart >= whole:
        return None
    parts = []
    position: dict[tuple[int, int], tuple[int, int, int]] = {}
    for k, (wanted, members) in enumerate(groups.items()):
        part_request = {
            **request,
            # `-p`: `.{k}` made part k of pub i of job J the workflow of pub k of job `J.i`
            # (a red-team run); no other job's workflow id ends `.<digits>-p<digits>`
            "workflow_id": f"{request['workflow_id']}-p{k}",
            "parameter_sets": [sets[p] for p in members] if sets else [],
            "observables": [observables[o] for o in wanted],
        }
        if request.get("seed") is not None:
            # each part its own draws: under one seed the parts' errors were the same draws
            part_request["seed"] = derive_seed(f"seed:{request['seed']}:part", k)
        shape = (len(members), len(wanted))
        part_grids = (np.broadcast_to(np.arange(len(members))[:, None], shape) if sets
                      else np.zeros(shape, dtype=int),
                      np.broadcast_to(np.arange(len(wanted))[None, :], shape))
        parts.append((PubPart(pub.circuit, shape, pub.precision), part_request, part_grids))
        for i, p in enumerate(members):
            for j, o in enumerate(wanted):
                position[(p, o)] = (k, i, j)
    part_of = np.zeros(pub.shape, dtype=int)
    index_in_part = np.zeros(pub.shape + (2,), dtype=int)
    for index in np.ndindex(*pub.shape):
        k, i, j = position[(int(parameter_grid[index]), int(observable_grid[index]))]
        part_of[index] = k
        index_in_part[index] = (i, j)
    return Split(parts, part_of, index_in_part)


def merged_result(pub, split: Split, results: list[PubResult]) -> PubResult:
    """The pub's result from its parts' results (in the order of `split.parts`): values in
    the pub's shape, the parts' workflow ids in `workflow_ids`, `shots` as a part's own
    metadata counts them (the most any circuit ran; an adaptive call's total, summed)."""
    evs = np.zeros(pub.shape, dtype=np.float64)
    stds = np.zeros(pub.shape, dtype=np.float64)
    for index in np.ndindex(*pub.shape):
        part = results[int(split.part_of[index])]
        at = tuple(int(i) for i in split.index_in_part[index])
        evs[index] = part.data.evs[at]
        stds[index] = part.data.stds[at]
    metadata = dict(results[0].metadata)
    metadata.pop("workflow_id", None)
    metadata["workflow_ids"] = [result.metadata["workflow_id"] for result in results]
    adaptive = [result.metadata.get("adaptive") for result in results]
    if all(adaptive):
        metadata["shots"] = sum(result.metadata["shots"] for result in results)
        metadata["adaptive"] = {
            "rounds": max(a["rounds"] for a in adaptive),
            "pilot_shots": adaptive[0]["pilot_shots"],
            "shots_per_basis": {f"{k}/{key}": shots for k, a in enumerate(adaptive)
                                for key, shots in a["shots_per_basis"].items()},
        }
    else:
        metadata["shots"] = max(result.metadata["shots"] for result in results)
    metadata["parts"] = len(results)
    return PubResult(DataBin(evs=evs, stds=stds, shape=pub.shape), metadata=metadata)
