"""Transpilation with a cache of transpiled, still-parameterized templates.

Key: (structural hash of the logical circuit, backend name, backend calibration version,
optimization level). Parameters stay symbolic through transpilation and are bound afterwards,
so every binding of one parameterized circuit reuses one transpiled template. One preset pass
manager is built per (backend, calibration version) and reused: building it costs more than
running it on a small circuit. A template's globally folded copies (ZNE) are kept beside it:
they do not depend on the job, and the same objects let the job's QPY encoding be reused
(workers/circuits/qpy_cache.py).
"""

from __future__ import annotations

from cachetools import LRUCache
from qiskit import QuantumCircuit
from qiskit.circuit import ControlFlowOp, Delay
from qiskit.transpiler import PassManager, generate_preset_pass_manager
from qiskit.transpiler.exceptions import TranspilerError

from workers.backends.aer import Backend
from workers.circuits.fingerprint import structural_hash
from workers.circuits.impostors import without_impostors
from workers.errors import InvalidCircuit
from workers.mitigation import zne

OPTIMIZATION_LEVEL = 1
SEED_TRANSPILER = 42

CacheKey = tuple[str, str, str, int]


class TranspileCache:
    """Transpiled templates by structure and backend calibration, least recently used out.

    Returned circuits are shared between callers: bind with `assign_parameters` (which copies),
    never modify them in place. Meant for one thread (an asyncio loop); not locked.
    """

    def __init__(self, maxsize: int = 512) -> None:
        self._templates: LRUCache[CacheKey, QuantumCircuit] = LRUCache(maxsize=maxsize)
        self._pass_managers: dict[tuple[str, str], PassManager] = {}
        # (id of the template, scale) -> (template, folded copy, scale reached); the template
        # is held so that its id is not reused while the entry is there.
        self._folded: LRUCache[tuple[int, float], tuple[QuantumCircuit, QuantumCircuit, float]] = (
            LRUCache(maxsize=maxsize)
        )
        self.hits = 0
        self.misses = 0

    def key(self, circuit: QuantumCircuit, backend: Backend) -> CacheKey:
        return (
            structural_hash(circuit),
            backend.name,
            backend.calibration_version,
            OPTIMIZATION_LEVEL,
        )

    def transpile(self, circuit: QuantumCircuit, backend: Backend) -> tuple[QuantumCircuit, bool]:
        """(transpiled template, whether it came from the cache)."""
        key = self.key(circuit, backend)
        template = self._templates.get(key)
        if template is not None:
            self.hits += 1
            return template, True
        self.misses += 1
        source = without_impostors(circuit, backend.target)
        if backend.target.dt is None:
            # Delays in seconds go before the transpiler sees them: mixed with delays in dt
            # it refused the circuit (TranspilerError 'Fail to unify time units'; red-team).
            source = delays_in_dt(source, None)
        try:
            template = self.pass_manager(backend).run(source)
        except TranspilerError as error:
            # What the backend cannot run (a reset or a measurement mid-circuit on Braket's
            # terminal-measurement target) came out as Qiskit's own TranspilerError, or as an
            # InvalidJob naming it from the sandbox (a red-team run).
            raise InvalidCircuit(f"{backend.name} cannot run the circuit: "
                                 f"{str(error)[:300]}") from None
        template = delays_in_dt(template, backend.target.dt)
        self._templates[key] = template
        return template, False

    def fold(self, template: QuantumCircuit, scale: float, method: str,
             seed) -> tuple[QuantumCircuit, float]:
        """zne.fold; a global fold is kept per template object and scale (it takes no seed);
        random folds depend on the job's seed and are not kept."""
        if method != "global":
            return zne.fold(template, scale, method, seed=seed)
        key = (id(template), scale)
        entry = self._folded.get(key)
        if entry is not None and entry[0] is template:
            return entry[1], entry[2]
        folded, reached = zne.fold(template, scale, method, seed=seed)
        self._folded[key] = (template, folded, reached)
        return folded, reached

    def pass_manager(self, backend: Backend) -> PassManager:
        key = (backend.name, backend.calibration_version)
        manager = self._pass_managers.get(key)
        if manager is None:
            manager = generate_preset_pass_manager(
                optimization_level=OPTIMIZATION_LEVEL,
                target=backend.target,
                seed_transpiler=SEED_TRANSPILER,
            )
            self._pass_managers[key] = manager
        return manager

    def __len__(self) -> int:
        return len(self._templates)


def delays_in_dt(circuit: QuantumCircuit, dt: float | None) -> QuantumCircuit:
    """`circuit` with its delays in the backend's `dt`, the one unit QPY keeps: Qiskit 2.6's
    QPY writes a delay's duration without its unit, so 100 ns came back as 100 dt and 1e-7 s
    failed to load (CircuitError), and a prepared job travels between processes as QPY. A
    backend without `dt` (the ideal simulator) simulates a delay as the identity: it is left
    out. The same object when it has no such delay."""
    def convert(instruction):
        operation = instruction.operation
        if isinstance(operation, ControlFlowOp):
            blocks = [delays_in_dt(block, dt) for block in operation.blocks]
            return [instruction.replace(operation=operation.replace_blocks(blocks))]
        if not isinstance(operation, Delay) or operation.unit == "dt":
            return [instruction]
        if dt is None:
            return []
        seconds = operation.duration * _SECONDS[operation.unit]
        return [instruction.replace(operation=Delay(round(seconds / dt), unit="dt"))]

    if not any(isinstance(i.operation, ControlFlowOp) or
               (isinstance(i.operation, Delay) and i.operation.unit != "dt")
               for i in circuit.data):
        return circuit
    rebuilt = circuit.copy_empty_like()
    for instruction in circuit.data:
        for converted in convert(instruction):
            rebuilt.append(converted, copy=False)
    return rebuilt


_SECONDS = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "ns": 1e-9, "ps": 1e-12}
