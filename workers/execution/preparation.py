"""From a job spec to transpiled templates and the list of circuits to run, and running them.

`prepare` parses, validates, builds the measured circuits and transpiles each once through
the cache, leaving parameters symbolic. Mitigation expands the job here, before execution:
ZNE adds noise-scaled (folded) copies of every template, dynamical decoupling pads every
template, readout mitigation copies the backend's confusion matrices into the job. `execute`
binds every task's parameters to its template and runs all tasks in one backend call. A
PreparedJob serialises to bytes (QPY for the templates, JSON for the rest) so the steps can
run in different processes.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from qiskit import QuantumCircuit
from qiskit.circuit import Parameter

from workers.backends.aer import BackendRegistry
from workers.backends.aer_binding import bound
from workers.circuits import qpy_bounds, qpy_cache
from workers.circuits.measurement import (
    basis_circuit,
    counts_circuit,
    measurement_bases,
    without_final_measurements,
)
from workers.circuits.parsing import parse_circuit, resolve_format
from workers.circuits.static_count import check_program
from workers.circuits.transpile import OPTIMIZATION_LEVEL, SEED_TRANSPILER, TranspileCache
from workers.circuits.validation import (
    check_against_circuit,
    check_angles_and_delays,
    check_circuit_count,
    check_request,
)
from workers.errors import (
    CorruptRecord,
    ExecutionFailed,
    InvalidJob,
    JobTooLarge,
    ParameterMismatch,
)
from workers.jobs import JobSpec, MitigationSpec, ObservableSpec, PauliTerm
from workers.limits import Limits
from workers.mitigation import ddd, zne
from workers.mitigation.readout import (
    ReadoutCalibration,
    ReadoutCalibrationCache,
    measure_calibration,
)
from workers.seeds import job_seed

COUNTS_BASIS = ""
_MAGIC = b"QLPJ"
_FORMAT_VERSION = 2  # 2: mitigation fields; version 1 records still read
_READABLE_VERSIONS = (1, 2)
_HEADER = struct.Struct(">4sBI")  # magic, format version, JSON length


@dataclass
class CircuitTask:
    """One circuit to execute: a template with one parameter set, measured in `basis`.

    `basis` is "" for a counts job, else one letter per qubit in Qiskit order.
    `scale_factor` is the ZNE noise scale its template was folded to (1.0: not folded).
    """

    template_index: int
    parameter_set_index: int
    parameter_values: tuple[float, ...]
    basis: str
    scale_factor: float = 1.0


# Avro's fixed fields of a result's circuit (index, shots, the scale factor's double, the
# lengths of its arrays and maps: one byte each at the least) and expectation (four doubles,
# two ints, a length), at the least: a floor, never above the encoded result (24 and 12 a
# register refused a 470 KB result as at least 982 KB: a red-team run).
CIRCUIT_RESULT_BYTES = 14
# Random folds run per scale factor whose fold is drawn (random gate folding at a factor that
# is not an odd integer), each with the job's shots: their spread enters the standard error.
RANDOM_FOLDS = 8
EXPECTATION_RESULT_BYTES = 34


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
    mitigation: MitigationSpec = MitigationSpec()  # as asked (validated)
    readout_calibration: ReadoutCalibration | None = None  # copied at prepare when asked
    fold_seed: int = 0  # seeds random gate folding
    reached_scales: tuple[float, ...] = ()  # per template: noisy gates / unfolded ones
    dd_applied: bool = False  # dynamical decoupling was inserted into every template
    # `simulation_estimate`, made where the job was prepared or loaded (not carried in its
    # bytes): a worker that has it need not walk the templates again on its event loop.
    simulation_seconds: float | None = field(default=None, compare=False)

    def result_floor_bytes(self) -> int:
        """The least its JobResult takes whatever the counts: each circuit's parameter
        values, basis, register layout (names and sizes) and one bitstring, each
        expectation's observable text, with Avro's fixed fields. 200 registers of
        1,000-character names over 5 circuits were found a 1 MB result only after the run was
        charged (a red-team run)."""
        # A circuit's register layout (each name, its length and size: varints) and its counts'
        # one bitstring at the least (every bit of a register, its length and count: varints):
        # 715 circuits of a 1,024-bit register passed this floor without the bitstrings, ran,
        # were charged $2.68 and failed as a 1,012,852-byte entry (a red-team run).
        layouts = [sum(len(register.name.encode()) + 2 for register in template.cregs)
                   + len({bit for register in template.cregs for bit in register}) + 2
                   for template in self.templates]
        circuits = sum(8 * len(task.parameter_values) + len(task.basis) + CIRCUIT_RESULT_BYTES
                       + layouts[task.template_index] for task in self.tasks)
        sets = max(1, len({task.parameter_set_index for task in self.tasks}))
        expectations = sets * sum(len(observable.label().encode()) + EXPECTATION_RESULT_BYTES
                                  for observable in self.observables)
        return circuits + expectations

    @property
    def unmitigated_tasks(self) -> list[int]:
        """Indices of the tasks at scale 1: exactly the circuits of the unmitigated job."""
        return [i for i, task in enumerate(self.tasks) if task.scale_factor == 1.0]

    def to_bytes(self) -> bytes:
        header = json.dumps(
            {
                "workflow_id": self.workflow_id,
                "backend": self.backend,
                "calibration_version": self.calibration_version,
                "shots": self.shots,
                "num_qubits": self.num_qubits,
                "tasks": [
                    [
                        t.template_index,
                        t.parameter_set_index,
                        list(t.parameter_values),
                        t.basis,
                        t.scale_factor,
                    ]
                    for t in self.tasks
                ],
                "observables": [
                    [[term.pauli, term.coeff] for term in o.terms] for o in self.observables
                ],
                "optimization_level": self.optimization_level,
                "seed_transpiler": self.seed_transpiler,
                "transpile_cache_hit": self.transpile_cache_hit,
                "parameter_names": list(self.parameter_names),
                "mitigation": self.mitigation.to_record(),
                "readout_calibration": (
                    None if self.readout_calibration is None else self.readout_calibration.to_dict()
                ),
                "fold_seed": self.fold_seed,
                "reached_scales": list(self.reached_scales),
                "dd_applied": self.dd_applied,
            },
            separators=(",", ":"),
        ).encode()
        circuits = qpy_cache.ENCODED.dump(self.templates)
        return _HEADER.pack(_MAGIC, _FORMAT_VERSION, len(header)) + header + circuits

    @classmethod
    def from_bytes(cls, data: bytes, *, cached: bool = True) -> PreparedJob:
        """Read `to_bytes` output; anything else raises CorruptRecord. `cached=False` loads
        the circuits afresh and keeps them out of the decoded-section cache."""
        try:
            magic, version, length = _HEADER.unpack_from(data)
            if magic != _MAGIC or version not in _READABLE_VERSIONS:
                raise ValueError(f"not a prepared job (magic {magic!r}, version {version})")
            start = _HEADER.size
            fields = json.loads(data[start : start + length])
            tasks = [_task_from_json(*task) for task in fields.pop("tasks")]
            # Every template serves at least one task, so a section with more templates than
            # the job has tasks is refused before it is loaded.
            load = qpy_cache.DECODED.load if cached else qpy_cache.load_uncached
            templates = load(bytes(data[start + length :]),
                             max_templates=min(qpy_bounds.MAX_TEMPLATES, len(tasks)))
            if any(not 0 <= task.template_index < len(templates) for task in tasks):
                raise ValueError(f"a task names a template outside the {len(templates)} held")
            calibration = fields.pop("readout_calibration", None)
            return cls(
                templates=templates,
                tasks=tasks,
                observables=tuple(
                    ObservableSpec(tuple(PauliTerm(p, c) for p, c in terms))
                    for terms in fields.pop("observables")
                ),
                parameter_names=tuple(fields.pop("parameter_names")),
                mitigation=MitigationSpec.from_record(fields.pop("mitigation", None)),
                readout_calibration=(
                    None if calibration is None else ReadoutCalibration.from_dict(calibration)
                ),
                reached_scales=tuple(fields.pop("reached_scales", ())),
                **fields,
            )
        except Exception as exc:
            raise CorruptRecord(f"prepared job does not decode: {exc}") from exc


def qpy_section(data: bytes) -> bytes:
    """The QPY section of `to_bytes` output (empty when it is not one)."""
    try:
        _, _, length = _HEADER.unpack_from(data)
    except struct.error:
        return b""
    return bytes(data[_HEADER.size + length :])


def _task_from_json(
    template_index: int,
    parameter_set_index: int,
    values: list[float],
    basis: str,
    scale_factor: float = 1.0,  # absent in format 1
) -> CircuitTask:
    return CircuitTask(
        template_index, parameter_set_index, tuple(values), basis, float(scale_factor)
    )


def scales_reached(templates: list[QuantumCircuit], block_scales: list[float],
                   bases: int, target=None) -> list[float]:
    """Per template, its noise over that of its basis's unfolded template (templates come a
    block of `bases` at a time, the first block unfolded): the sum of its noisy gates'
    errors in `target` (`zne.gate_noise`), or their count where the target lacks one.
    InvalidJob if two scale factors reach the same scale in some basis
    (`zne.check_distinct_scales`)."""
    noise = [zne.gate_noise(template, target) for template in templates]
    if any(value is None for value in noise):
        noise = [float(zne.noisy_gate_count(template.data)) for template in templates]
    reached = [noise[i] / noise[i % bases] if noise[i % bases] else 1.0
               for i in range(len(templates))]
    for basis in range(bases):
        by_scale: dict[float, list[float]] = {}
        for index in range(basis, len(templates), bases):
            by_scale.setdefault(block_scales[index // bases], []).append(reached[index])
        zne.check_distinct_scales({s: sum(v) / len(v) for s, v in by_scale.items()},
                                  zne.noisy_gate_count(templates[basis].data))
    return reached


def prepare(
    spec: JobSpec,
    registry: BackendRegistry,
    cache: TranspileCache,
    limits: Limits,
    readout_cache: ReadoutCalibrationCache | None = None,
    *,
    fold_seed: int | None = None,
) -> PreparedJob:
    """Validate `spec`, build its measured circuits, transpile them (cached) and expand them
    for the mitigation the job asks for.

    `readout_cache` supplies the backend's readout calibration when readout mitigation is
    asked (without one, the calibration circuits run for this job alone). `fold_seed` seeds
    random gate folding; by default the job's seed (its explicit one, else derived from the
    workflow id), so preparing the same job again gives the same circuits.

    Tasks come in blocks of equal scale factor: first the unmitigated job's tasks (scale 1,
    ordered by parameter set, then measurement basis), then one block per further ZNE scale
    factor in the order asked, each ordered the same way. Templates: the unfolded ones
    (one per basis), then one folded set per further scale factor.

    Raises the InvalidJob subclass naming the first problem found.
    """
    backend = registry.get(spec.backend)
    check_request(spec, limits)
    mitigation = _checked_mitigation(spec)
    fmt = resolve_format(spec.circuit, spec.circuit_format)
    check_program(spec.circuit, fmt, limits)  # counted before anything expands it
    circuit = parse_circuit(spec.circuit, fmt)
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
    scales = [1.0]
    if mitigation.zne is not None:
        scales += [s for s in mitigation.zne.scale_factors if s != 1.0]
    # (scale factor, fold) per block of templates, one template per basis in each
    blocks = [(scale, fold) for scale in scales
              for fold in range(folds_at(mitigation.zne, scale) if scale != 1.0 else 1)]
    check_circuit_count(len(parameter_sets) * len(logical) * len(blocks), limits)

    check_angles_and_delays(circuit, backend.target.dt)  # before the transpiler converts delays
    transpiled = [cache.transpile(c, backend) for c in logical]
    templates = [template for template, _ in transpiled]
    if fold_seed is None:
        fold_seed = job_seed(spec.workflow_id, spec.seed)
    if mitigation.zne is not None:
        for template in templates:
            zne.check_foldable(template)
        for scale, fold in blocks[1:]:
            scale_index = scales.index(scale)
            for basis_index, template in enumerate(transpiled):
                folded, _ = cache.fold(
                    template[0],
                    scale,
                    mitigation.zne.folding,
                    seed=[fold_seed, scale_index, basis_index] + ([fold] if fold else []),
                )
                templates.append(folded)
    dd_applied = mitigation.dynamical_decoupling and ddd.supports_dd(backend.target)
    if dd_applied:
        manager = ddd.pass_manager(backend.target)
        templates = [ddd.apply_dd(template, manager) for template in templates]
    reached = [1.0] * len(templates)
    if mitigation.zne is not None:
        # Counted on what runs: DD's x gates are noisy too, and a folded template has more
        # idle windows to fill (reported 2.2 where 3.0 ran; a red-team run).
        reached = scales_reached(templates, [scale for scale, _ in blocks], len(transpiled),
                                 getattr(backend, "target", None))

    calibration = None
    if mitigation.readout:
        calibration = (
            readout_cache.get(backend)
            if readout_cache is not None
            else measure_calibration(backend)
        )

    # Block by block: a scale's folds follow one another, each with every parameter set and
    # basis (combine.py tells the folds apart by that order).
    tasks = [
        CircuitTask(block_index * len(bases) + index, set_index, tuple(values), basis, scale)
        for block_index, (scale, _) in enumerate(blocks)
        for set_index, values in enumerate(parameter_sets)
        for index, basis in enumerate(bases)
    ]
    prepared = PreparedJob(
        workflow_id=spec.workflow_id,
        backend=backend.name,
        calibration_version=backend.calibration_version,
        shots=spec.shots,
        num_qubits=circuit.num_qubits,
        templates=templates,
        tasks=tasks,
        observables=spec.observables,
        optimization_level=OPTIMIZATION_LEVEL,
        seed_transpiler=SEED_TRANSPILER,
        transpile_cache_hit=all(hit for _, hit in transpiled),
        parameter_names=tuple(p.name for p in circuit.parameters),
        mitigation=mitigation,
        readout_calibration=calibration,
        fold_seed=fold_seed,
        reached_scales=tuple(reached),
        dd_applied=dd_applied,
    )
    # Estimated where it is prepared with its backend at hand; the sandbox prepares with a
    # view of it that cannot estimate, and the worker estimates such a job as it loads it, in
    # a thread (streams/agents/common.py `load_prepared`). Refused past the limit at its call
    # (after the fallbacks that skip its backend), as the simulator would.
    if getattr(backend, "estimated_seconds", None) is not None:
        prepared.simulation_seconds = simulation_estimate(prepared, backend)
    return prepared


def folds_at(options, scale: float) -> int:
    """How many random folds a scale factor runs: RANDOM_FOLDS for random gate folding at a
    factor that is not an odd integer, whose choice of gates moves the value by more than
    the shots' error (one fold per job gave stds a fifth of the run-to-run spread: a red-team
    run), so the job averages folds and measures their spread; else 1 (the fold is fixed)."""
    if options is None or options.folding != "random_gates" or zne.odd_integer(scale):
        return 1
    return RANDOM_FOLDS


def _checked_mitigation(spec: JobSpec) -> MitigationSpec:
    mitigation = spec.mitigation
    if mitigation is None:
        return MitigationSpec()
    if not isinstance(mitigation, MitigationSpec):
        raise InvalidJob(f"mitigation must be a MitigationSpec, got {type(mitigation).__name__}")
    if mitigation.zne is None:
        return mitigation
    if not spec.observables:
        raise InvalidJob(
            "zne needs observables: a counts job has no expectation value to extrapolate"
        )
    return MitigationSpec(
        zne=mitigation.zne.checked(),
        readout=mitigation.readout,
        dynamical_decoupling=mitigation.dynamical_decoupling,
    )


def task_templates(
    prepared: PreparedJob,
) -> tuple[list[QuantumCircuit], list[dict[Parameter, float] | None]]:
    """Each task's template and the values of the template's parameters (None: it has none),
    in task order: what a backend that binds parameters itself runs."""
    templates: list[QuantumCircuit] = []
    bindings: list[dict[Parameter, float] | None] = []
    for task in prepared.tasks:
        template = prepared.templates[task.template_index]
        values = None
        if template.num_parameters:
            named = dict(zip(prepared.parameter_names, task.parameter_values, strict=True))
            values = {p: named[p.name] for p in template.parameters}
        templates.append(template)
        bindings.append(values)
    return templates, bindings


def bind_tasks(prepared: PreparedJob) -> list[QuantumCircuit]:
    """One executable circuit per task: its template with its parameter values bound by name."""
    return [bound(t, v) for t, v in zip(*task_templates(prepared), strict=True)]


def backend_circuits(
    prepared: PreparedJob, backend: Any
) -> tuple[list[QuantumCircuit], list[dict[Parameter, float] | None]]:
    """The tasks' circuits as `backend` takes them: templates and their values for a backend
    that binds parameters itself (`binds_parameters`), bound circuits for any other."""
    if getattr(backend, "binds_parameters", False):
        return task_templates(prepared)
    try:
        circuits = bind_tasks(prepared)
    except (ArithmeticError, ValueError) as exc:
        raise (binding_error(prepared) or exc) from exc
    return circuits, [None] * len(circuits)


def run_circuits(
    backend: Any,
    circuits: list[QuantumCircuit],
    shots: int | list[int],
    seed: int | list[int],
    bindings: list[dict[Parameter, float] | None],
) -> list[dict[str, int]]:
    """`backend.run`, with the bindings only where a circuit has them."""
    if all(b is None for b in bindings):
        return backend.run(circuits, shots, seed)
    return backend.run(circuits, shots, seed, bindings=bindings)


def binding_error(prepared: PreparedJob) -> ParameterMismatch | None:
    """The typed error of a job one of whose parameter sets gives a gate a value that is not a
    finite number (`1/a` at a = 0, `a*1e300` at a = 1e10), or None. A backend that binds
    values itself fails the whole call on such a job; this finds which job it was."""
    for task, template, values in zip(prepared.tasks, *task_templates(prepared), strict=True):
        try:
            bound(template, values)
        except (ArithmeticError, ValueError) as exc:
            return ParameterMismatch(
                f"parameter set {task.parameter_set_index} gives a gate a value that is not "
                f"a finite number: {exc}"
            )
    return None


def simulation_estimate(prepared: PreparedJob, backend: Any,
                        estimates: dict | None = None) -> float:
    """Seconds of one core the simulation `prepared` asks of `backend` (its
    `estimated_seconds` per task; 0 for a backend without one). `estimates` keeps the
    per-template estimates of one call (templates are shared)."""
    estimate = getattr(backend, "estimated_seconds", None)
    if estimate is None:
        return 0.0
    setup = getattr(backend, "setup_seconds", None)
    estimates = {} if estimates is None else estimates
    total = 0.0
    for task in prepared.tasks:
        template = prepared.templates[task.template_index]
        key = (id(template), prepared.shots)
        if key not in estimates:
            estimates[key] = estimate(template, prepared.shots)
        total += estimates[key]
    if setup is not None:  # once per template of the job (a call converts each once)
        used = {id(t): t for t in (prepared.templates[task.template_index]
                                   for task in prepared.tasks)}
        for template in used.values():
            key = (id(template), "setup")
            if key not in estimates:
                estimates[key] = setup(template)
            total += estimates[key]
    return total


def check_simulation(
    prepared: PreparedJob, backend: Any, max_seconds: float | None, estimates: dict | None = None
) -> None:
    """JobTooLarge if the simulation `prepared` asks of `backend` is estimated above
    `max_seconds` (None: no limit; a backend without `estimated_seconds` is not checked).
    `estimates` keeps the per-template estimates of one call (templates are shared)."""
    if max_seconds is None:
        return
    error = too_much_simulation(prepared, simulation_estimate(prepared, backend, estimates),
                                max_seconds)
    if error is not None:
        raise error


def too_much_simulation(prepared: PreparedJob, total: float,
                        max_seconds: float | None) -> JobTooLarge | None:
    """The JobTooLarge of a job whose simulation is estimated at `total` seconds, past
    `max_seconds` (None: no limit), else None."""
    if max_seconds is None or total <= max_seconds:
        return None
    return JobTooLarge(
        f"job would need about {total:.3g} s of simulation on {prepared.backend} "
        f"> {max_seconds:g} s (max_simulation_seconds): fewer shots, gates, qubits or circuits"
    )


def execute(
    prepared: PreparedJob,
    registry: BackendRegistry,
    seed: int,
    max_simulation_seconds: float | None = None,
) -> list[dict[str, int]]:
    """Counts per task, in task order, from one run on the prepared job's backend."""
    backend = registry.get(prepared.backend)
    check_simulation(prepared, backend, max_simulation_seconds)
    circuits, bindings = backend_circuits(prepared, backend)
    try:
        return run_circuits(backend, circuits, prepared.shots, seed, bindings)
    except ExecutionFailed as exc:
        error = binding_error(prepared)
        if error is None:
            raise
        raise error from exc
