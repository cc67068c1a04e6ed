"""From a job spec to transpiled templates and the list of circuits to run, and running them.

`prepare` parses, validates, builds the measured circuits and transpiles each once through
the cache, leaving parameters symbolic. `execute` binds every task's parameters to its
template and runs all tasks in one backend call. A PreparedJob serialises to bytes (QPY for
the templates, JSON for the rest) so the two steps can run in different processes.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass

from qiskit import QuantumCircuit, qpy

from workers.backends import BackendRegistry
from workers.circuits import parse_circuit
from workers.errors import CorruptRecord
from workers.jobs import JobSpec, ObservableSpec, PauliTerm
from workers.limits import Limits
from workers.measurement import (
    basis_circuit,
    counts_circuit,
    measurement_bases,
    without_final_measurements,
)
from workers.transpile import OPTIMIZATION_LEVEL, SEED_TRANSPILER, TranspileCache
from workers.validation import check_against_circuit, check_circuit_count, check_request

COUNTS_BASIS = ""
_MAGIC = b"QLPJ"
_FORMAT_VERSION = 1
_HEADER = struct.Struct(">4sBI")  # magic, format version, JSON length


@dataclass
class CircuitTask:
    """One circuit to execute: a template with one parameter set, measured in `basis`.

    `basis` is "" for a counts job, else one letter per qubit in Qiskit order.
    """

    template_index: int
    parameter_set_index: int
    parameter_values: tuple[float, ...]
    basis: str


@dataclass
class PreparedJob:
    """Everything `execute` and `estimate_expectations` need, and the provenance to report."""

    workflow_id: str
    backend: str
    calibration_version: str
    shots: int
    num_qubits: int
    templates: list[QuantumCircuit]  # transpiled, still parameterized; shared, do not modify
    tasks: list[CircuitTask]  # in execution order
    observables: tuple[ObservableSpec, ...]
    optimization_level: int
    seed_transpiler: int
    transpile_cache_hit: bool  # every template came from the cache
    parameter_names: tuple[str, ...] = ()  # the logical circuit's, in parameter-set order

    def to_bytes(self) -> bytes:
        header = json.dumps(
            {
                "workflow_id": self.workflow_id,
                "backend": self.backend,
                "calibration_version": self.calibration_version,
                "shots": self.shots,
                "num_qubits": self.num_qubits,
                "tasks": [
                    [t.template_index, t.parameter_set_index, list(t.parameter_values), t.basis]
                    for t in self.tasks
                ],
                "observables": [
                    [[term.pauli, term.coeff] for term in o.terms] for o in self.observables
                ],
                "optimization_level": self.optimization_level,
                "seed_transpiler": self.seed_transpiler,
                "transpile_cache_hit": self.transpile_cache_hit,
                "parameter_names": list(self.parameter_names),
            },
            separators=(",", ":"),
        ).encode()
        circuits = io.BytesIO()
        qpy.dump(self.templates, circuits)
        return _HEADER.pack(_MAGIC, _FORMAT_VERSION, len(header)) + header + circuits.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PreparedJob:
        """Read `to_bytes` output; anything else raises CorruptRecord."""
        try:
            magic, version, length = _HEADER.unpack_from(data)
            if magic != _MAGIC or version != _FORMAT_VERSION:
                raise ValueError(f"not a prepared job (magic {magic!r}, version {version})")
            start = _HEADER.size
            fields = json.loads(data[start : start + length])
            templates = qpy.load(io.BytesIO(data[start + length :]))
            return cls(
                templates=list(templates),
                tasks=[
                    CircuitTask(i, p, tuple(values), b) for i, p, values, b in fields.pop("tasks")
                ],
                observables=tuple(
                    ObservableSpec(tuple(PauliTerm(p, c) for p, c in terms))
                    for terms in fields.pop("observables")
                ),
                parameter_names=tuple(fields.pop("parameter_names")),
                **fields,
            )
        except Exception as exc:
            raise CorruptRecord(f"prepared job does not decode: {exc}") from exc


def prepare(
    spec: JobSpec, registry: BackendRegistry, cache: TranspileCache, limits: Limits
) -> PreparedJob:
    """Validate `spec`, build its measured circuits and transpile them (cached).

    Raises the InvalidJob subclass naming the first problem found.
    """
    backend = registry.get(spec.backend)
    check_request(spec, limits)
    circuit = parse_circuit(spec.circuit, spec.circuit_format)
    check_against_circuit(spec, circuit, backend, limits)

    if spec.observables:
        # Only identity terms: still one all-Z run, so every parameter set has a task.
        bases = measurement_bases(spec.observables) or ["Z" * circuit.num_qubits]
        state = without_final_measurements(circuit)
        logical = [basis_circuit(state, basis) for basis in bases]
    else:
        bases = [COUNTS_BASIS]
        logical = [counts_circuit(circuit)]
    parameter_sets = spec.parameter_sets or ((),)
    check_circuit_count(len(parameter_sets) * len(logical), limits)

    transpiled = [cache.transpile(c, backend) for c in logical]
    tasks = [
        CircuitTask(index, set_index, tuple(values), basis)
        for set_index, values in enumerate(parameter_sets)
        for index, basis in enumerate(bases)
    ]
    return PreparedJob(
        workflow_id=spec.workflow_id,
        backend=backend.name,
        calibration_version=backend.calibration_version,
        shots=spec.shots,
        num_qubits=circuit.num_qubits,
        templates=[template for template, _ in transpiled],
        tasks=tasks,
        observables=spec.observables,
        optimization_level=OPTIMIZATION_LEVEL,
        seed_transpiler=SEED_TRANSPILER,
        transpile_cache_hit=all(hit for _, hit in transpiled),
        parameter_names=tuple(p.name for p in circuit.parameters),
    )


def bind_tasks(prepared: PreparedJob) -> list[QuantumCircuit]:
    """One executable circuit per task: its template with its parameter values bound by name."""
    circuits = []
    for task in prepared.tasks:
        template = prepared.templates[task.template_index]
        if template.num_parameters:
            values = dict(zip(prepared.parameter_names, task.parameter_values, strict=True))
            template = template.assign_parameters({p: values[p.name] for p in template.parameters})
        circuits.append(template)
    return circuits


def execute(prepared: PreparedJob, registry: BackendRegistry, seed: int) -> list[dict[str, int]]:
    """Counts per task, in task order, from one run on the prepared job's backend."""
    backend = registry.get(prepared.backend)
    return backend.run(bind_tasks(prepared), prepared.shots, seed)
