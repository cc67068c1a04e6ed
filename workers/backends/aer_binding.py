"""Parameterized templates on Aer: which ones Aer may bind from `parameter_binds` itself, the
runs bound in Python instead, and how a call's runs of one template are grouped."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from qiskit import QuantumCircuit
from qiskit.circuit import ControlFlowOp, Parameter, ParameterExpression

from workers.errors import ExecutionFailed

if TYPE_CHECKING:
    from workers.backends.aer import FinalMeasurements


def bound(circuit: QuantumCircuit, values: Mapping[Parameter, float] | None) -> QuantumCircuit:
    """`circuit` with `values` assigned (no values: `circuit` itself)."""
    # Not strict: a run's values may name a parameter only its dropped global phase held.
    return circuit if values is None else circuit.assign_parameters(values, strict=False)


# The parameterized gates Aer binds from `parameter_binds` exactly as binding in Python
# first would (tests/unit/workers/backends/test_aer_binding.py checks each against the Aer
# installed). Aer 0.18 applies cp, crx, cry, crz, cu1, cu3 and cu unbound with one value set
# (a controlled rotation by pi gave the counts of none: a red-team run; qiskit-aer #2323)
# and loses experiments with more ("Result for experiment 1 could not be found"); a
# template's global phase held as an expression raised OverflowError. A template with
# anything else parameterized is bound in Python, run by run.
AER_BINDS = frozenset({"p", "r", "rx", "rxx", "ry", "ryy", "rz", "rzx", "rzz",
                       "u", "u1", "u2", "u3"})


def _parameterized(value) -> bool:
    return isinstance(value, ParameterExpression) and bool(value.parameters)


def binds_in_aer(circuit: QuantumCircuit, *, phase_dropped: bool = False) -> bool:
    """Whether Aer may bind `circuit`'s parameters itself (see AER_BINDS); `phase_dropped`:
    its own global phase aside (`bound_where_aer_cannot` drops it)."""
    if not phase_dropped and isinstance(circuit.global_phase, ParameterExpression):
        # The transpiled template of a circuit with a parameter only in its phase: Aer
        # raised "can't convert negative int to unsigned" (a red-team run). A template's own
        # phase is dropped before Aer sees it; a control-flow block's is not: bound in Python.
        return False
    for instruction in circuit.data:
        operation = instruction.operation
        if isinstance(operation, ControlFlowOp):
            if not all(binds_in_aer(block) for block in operation.blocks):
                return False
        elif operation.name not in AER_BINDS and any(map(_parameterized, operation.params)):
            return False
    return True


def without_global_phase(circuit: QuantumCircuit) -> QuantumCircuit:
    """A copy of `circuit` whose global phase is 0: counts and probabilities do not see it."""
    copy = circuit.copy()
    copy.global_phase = 0
    return copy


def bound_where_aer_cannot(
    circuits: list[QuantumCircuit], values: list[Mapping[Parameter, float] | None],
) -> None:
    """Prepare each parameterized run, in place, for Aer's own binding: a global phase held
    as an expression is dropped (a template transpiled into native gates often holds one,
    0.25*t for a cp; bound in Python for it, 1,000 value sets on aer.noisy took 4.7 s
    against 1.1 s: a red-team run), and a run whose template Aer would still bind wrongly
    is bound in Python."""
    ready: dict[int, tuple[QuantumCircuit, bool]] = {}
    for i, (circuit, run_values) in enumerate(zip(circuits, values, strict=True)):
        if run_values is None or not circuit.num_parameters:
            continue
        if id(circuit) not in ready:
            template = circuit
            if isinstance(template.global_phase, ParameterExpression):
                template = without_global_phase(template)
            ready[id(circuit)] = (template, binds_in_aer(template, phase_dropped=True))
        template, fine = ready[id(circuit)]
        circuits[i] = template if fine else bound(template, run_values)
        if not fine:
            values[i] = None


@dataclass
class TemplateRuns:
    """Runs of one template in an Aer call: circuit indices and their values (and, exactly
    sampled, the template's measurement map)."""

    template: QuantumCircuit
    measurements: FinalMeasurements | None = None
    indices: list[int] = field(default_factory=list)
    values: list[Mapping[Parameter, float] | None] = field(default_factory=list)

    def add(self, index: int, values: Mapping[Parameter, float] | None) -> None:
        self.indices.append(index)
        self.values.append(values)

    def parameter_binds(self, backend: str) -> dict[Parameter, list[float]]:
        """Aer's `parameter_binds` entry: each parameter's value in every run, in run order;
        empty for a template without parameters."""
        parameters = self.template.parameters
        if not parameters:
            return {}
        if any(v is None for v in self.values):
            raise ExecutionFailed(f"{backend}: a circuit has parameters and no values for them")
        try:
            return {p: [float(v[p]) for v in self.values] for p in parameters}  # type: ignore[index]
        except KeyError as missing:
            raise ExecutionFailed(f"{backend}: no value for parameter {missing}") from None


def consecutive_runs(
    circuits: Sequence[QuantumCircuit],
    values: Sequence[Mapping[Parameter, float] | None],
    indices: Sequence[int],
) -> list[TemplateRuns]:
    """`indices` (in order) as Aer circuits: consecutive runs of one parameterized template
    become one circuit with their values; any other run is a circuit of its own."""
    groups: list[TemplateRuns] = []
    for i in indices:
        circuit = circuits[i]
        if not (groups and groups[-1].template is circuit and circuit.num_parameters):
            groups.append(TemplateRuns(circuit))
        groups[-1].add(i, values[i])
    return groups

