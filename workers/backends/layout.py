"""Layout for device backends: the qubits a circuit runs on are chosen for that circuit.

Qiskit's preset pass manager at optimization level 1 keeps the trivial layout (virtual qubit
i on physical qubit i) whenever the circuit fits the coupling map without swaps, so on a
127-qubit device every small circuit would land on qubits 0..n-1 whatever their errors. A
backend with `layout_method` set (the device backends and the IBM Runtime adapter: "sabre")
gets a pass manager with that layout method instead; at level 1 this is followed by
`VF2PostLayout`, which moves the routed circuit to the isomorphic placement with the lowest
calibrated error. Everything else (optimization level 1, seed 42, the cache key) is
`workers.circuits.transpile.TranspileCache`'s.
"""

from __future__ import annotations

from qiskit.transpiler import PassManager, generate_preset_pass_manager

from workers.circuits.transpile import OPTIMIZATION_LEVEL, SEED_TRANSPILER, TranspileCache


class DeviceTranspileCache(TranspileCache):
    """A TranspileCache whose pass manager honours a backend's `layout_method`."""

    def pass_manager(self, backend) -> PassManager:
        method = getattr(backend, "layout_method", None)
        if method is None:
            return super().pass_manager(backend)
        key = (backend.name, backend.calibration_version)
        manager = self._pass_managers.get(key)
        if manager is None:
            manager = generate_preset_pass_manager(
                optimization_level=OPTIMIZATION_LEVEL,
                target=backend.target,
                seed_transpiler=SEED_TRANSPILER,
                layout_method=method,
            )
            self._pass_managers[key] = manager
        return manager
