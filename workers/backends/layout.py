"""Layout for device backends: the qubits a circuit runs on are chosen for that circuit.

Qiskit's preset pass manager at optimization level 1 keeps the trivial layout (virtual qubit
i on physical qubit i) whenever the circuit fits the coupling map without swaps, so on a
127-qubit device every small circuit would land on qubits 0..n-1 whatever their errors (and
`layout_method="sabre"` at level 1 skips the error-aware VF2PostLayout when no swap is needed:
a Bell pair landed on a qubit with 13.6 % readout error on Torino). A backend whose
`layout_method` is "noise_aware" (the device backends and the IBM Runtime adapter) therefore
gets level 1 with the layout and routing stages of level 2: `VF2Layout` places the circuit
on the isomorphic subgraph with the lowest calibrated gate and readout errors, and
`SabreLayout` takes over when no placement without swaps exists; routing is followed by
`VF2PostLayout`, which moves the routed circuit to the lowest-error qubits of the same shape.
With level 1's routing stage, Sabre's error-blind choice stood: 6 of 20 random 4-5 qubit
circuits on Torino used a CZ whose calibrated error is 1.0 and a qubit read with 0.565 error
(TVD 0.57-0.80 from ideal, against 0.06-0.09 at level 1; a red-team run). Everything else
(optimization level 1, seed 42, the cache key) is `workers.circuits.transpile.TranspileCache`'s.
"""

from __future__ import annotations

import math

from qiskit.circuit import Delay, ParameterExpression
from qiskit.transpiler import PassManager, generate_preset_pass_manager
from qiskit.transpiler.basepasses import TransformationPass

from workers.backends.idle import delay_ns
from workers.circuits.transpile import OPTIMIZATION_LEVEL, SEED_TRANSPILER, TranspileCache

NOISE_AWARE = "noise_aware"
_LAYOUT_STAGE_LEVEL = 2


class AlignDelays(TransformationPass):
    """Each delay as a whole number of the device's timing alignment, in its `dt` (the
    nearest; a parameterized one is left as it is). A delay that is not (1 µs on Sherbrooke:
    4,500 dt, alignment 16) stopped the preset pass manager's scheduling stage, "not
    scheduled", and a T1 sweep failed at most of its points (a red-team run)."""

    def __init__(self, dt: float, alignment: int) -> None:
        super().__init__()
        self.dt = dt
        self.alignment = alignment

    def run(self, dag):
        for node in dag.op_nodes(Delay):
            duration = node.op.duration
            if isinstance(duration, ParameterExpression):
                continue
            in_dt = delay_ns(node.op, self.dt) / (self.dt * 1e9)
            aligned = self.alignment * round(in_dt / self.alignment)
            if node.op.unit != "dt" or aligned != duration:
                dag.substitute_node(node, Delay(int(aligned), "dt"))
        return dag


def device_pass_manager(target) -> PassManager:
    """Level 1 with the noise-aware layout and routing stages of level 2 (see the module
    docstring), and delays aligned to the device's timing constraints."""
    manager = generate_preset_pass_manager(
        optimization_level=OPTIMIZATION_LEVEL, target=target, seed_transpiler=SEED_TRANSPILER
    )
    noise_aware = generate_preset_pass_manager(
        optimization_level=_LAYOUT_STAGE_LEVEL, target=target, seed_transpiler=SEED_TRANSPILER)
    manager.layout = noise_aware.layout
    manager.routing = noise_aware.routing
    alignment = math.lcm(target.pulse_alignment or 1, target.acquire_alignment or 1)
    if target.dt and alignment > 1:
        manager.pre_scheduling = PassManager([AlignDelays(target.dt, alignment)])
    return manager


class DeviceTranspileCache(TranspileCache):
    """A TranspileCache that gives backends asking for it the noise-aware layout stage."""

    def pass_manager(self, backend) -> PassManager:
        if getattr(backend, "layout_method", None) != NOISE_AWARE:
            return super().pass_manager(backend)
        key = (backend.name, backend.calibration_version)
        manager = self._pass_managers.get(key)
        if manager is None:
            manager = self._pass_managers[key] = device_pass_manager(backend.target)
        return manager
