"""Zero-noise extrapolation: unitary folding of transpiled circuits, and extrapolation to zero.

Folding is done natively on the transpiled, still-parameterized template (see
docs/mitigation.md for why not with mitiq's folding functions): the circuit's unitary part U
(everything before its final measurements) becomes

- global folding: U (U^-1 U)^k, then U_s^-1 U_s for a suffix U_s of U when the scale factor is
  not an odd integer (mitiq's `fold_global` rule); a barrier separates the folds;
- random gate folding: every noisy gate G becomes G (G^-1 G)^k, then a seeded random
  selection of the noisy gates gets one more G^-1 G (mitiq's `fold_gates_at_random` rule).

"Noisy gates" are all gates but `rz` (virtual, error-free on these devices, so folding it adds
no noise). The scale factor counts noisy gates: folding adds them in pairs, so a folded
circuit has G + 2k of them for G in the original, k the nearest to G(scale - 1)/2 (at least 1
above scale 1). The scale it reaches, its gates' errors over the original's (`gate_noise`,
by count where the backend gives no error), is what extrapolation uses.
Inverses stay in the native basis: cx, x are self-inverse, rz(t)^-1 =
rz(-t), and sx^-1 = rz(pi) sx rz(pi) up to a global phase (which is kept exact). No
transpiler runs after folding, so nothing cancels the folds; qubits, coupling and layout are
those of the template.

Extrapolation uses mitiq's factories. Linear, Richardson and polynomial fits are linear maps of
the measured values, y0 = sum_i w_i y_i, so the standard error is sqrt(sum_i w_i^2 se_i^2)
exactly; the weights come from extrapolating unit vectors. The exponential fit is not linear;
its standard error is the delta method with a central-difference gradient.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
from qiskit import QuantumCircuit
from qiskit.circuit import Barrier, CircuitInstruction, Gate
from qiskit.circuit.library import RZGate, SXGate

from workers.backends.base import SDK_IMPORT_LOCK
from workers.errors import InvalidJob

VIRTUAL_GATES = frozenset({"rz"})
_SKIPPED = frozenset({"barrier"})
_NOT_FOLDABLE = frozenset(
    {
        "measure",
        "reset",
        "delay",
        "if_else",
        "while_loop",
        "for_loop",
        "switch_case",
        "store",
        "box",
    }
)


# --------------------------------------------------------------------------------- folding
def split_final_measurements(
    circuit: QuantumCircuit,
) -> tuple[list[CircuitInstruction], list[CircuitInstruction]]:
    """(body, tail): the tail is every measurement (and barrier) with nothing after it on its
    qubits and clbits; the body is the rest, in order."""
    final = [False] * len(circuit.data)
    busy_qubits: set = set()
    busy_clbits: set = set()
    for index in range(len(circuit.data) - 1, -1, -1):
        instruction = circuit.data[index]
        name = instruction.operation.name
        qubits, clbits = set(instruction.qubits), set(instruction.clbits)
        if name == "measure" and not (qubits & busy_qubits) and not (clbits & busy_clbits):
            final[index] = True
        elif name == "barrier" and not (qubits & busy_qubits):
            final[index] = True
        else:
            busy_qubits |= qubits
            busy_clbits |= clbits
    body = [i for i, is_final in zip(circuit.data, final, strict=True) if not is_final]
    tail = [i for i, is_final in zip(circuit.data, final, strict=True) if is_final]
    return body, tail


def check_foldable(circuit: QuantumCircuit) -> None:
    """InvalidJob unless the circuit is unitary gates followed by final measurements."""
    body, _ = split_final_measurements(circuit)
    for instruction in body:
        name = instruction.operation.name
        if name in _NOT_FOLDABLE or instruction.clbits or not _is_gate(instruction):
            raise InvalidJob(
                f"zne folds unitary circuits only: {name} before the final measurements"
            )


def noisy_gate_count(instructions: Sequence[CircuitInstruction]) -> int:
    """Gates other than virtual `rz` (measurements and barriers do not count)."""
    return sum(1 for i in instructions if _is_noisy(i))


def gate_noise(circuit: QuantumCircuit, target) -> float | None:
    """The sum of the errors `target` gives the circuit's noisy gates on their qubits; None
    when it has none for one of them (or no target). Counted alike, the gates a non-odd
    factor folds (the end of the circuit) stood for the whole: GHZ-3's ZZI at 1, 1.3, 2
    (Richardson, readout) came out 1.164 +- 0.005 for an exact 1.0, as its Z basis's last
    folds add sx gates, which add almost no noise; and DD's x gates counted as cx did (a
    red-team run)."""
    if target is None:
        return None
    total = 0.0
    for instruction in circuit.data:
        if not _is_noisy(instruction):
            continue
        name = instruction.operation.name
        qargs = tuple(circuit.find_bit(qubit).index for qubit in instruction.qubits)
        try:
            error = target[name][qargs].error
        except (KeyError, TypeError, AttributeError):
            return None
        if error is None:
            return None
        total += error
    return total


def two_qubit_gate_count(circuit: QuantumCircuit) -> int:
    return sum(1 for i in circuit.data if len(i.qubits) == 2 and i.operation.name not in _SKIPPED)


def odd_integer(scale_factor: float) -> bool:
    """Whether folding reaches `scale_factor` by whole folds of every gate (U (U^-1 U)^k),
    the same circuit whatever the seed."""
    return float(scale_factor).is_integer() and int(scale_factor) % 2 == 1


def fold(
    circuit: QuantumCircuit, scale_factor: float, method: str, seed: int | Sequence[int] = 0
) -> tuple[QuantumCircuit, float]:
    """(folded circuit, scale actually reached = noisy gates after / before).

    `circuit` is a transpiled template (native gates, physical qubits), parameterized or not;
    it is not modified. `seed` only matters for "random_gates".
    """
    check_foldable(circuit)
    body, tail = split_final_measurements(circuit)
    base = noisy_gate_count(body)
    if scale_factor == 1.0 or base == 0:
        return circuit, 1.0
    pairs = folded_pairs(base, scale_factor)
    if method == "global":
        folded_body = _fold_global(body, base, pairs)
    elif method == "random_gates":
        folded_body = _fold_random(body, base, pairs, np.random.default_rng(seed))
    else:
        raise InvalidJob(f"unknown folding method {method!r}")
    out = circuit.copy_empty_like()
    phase = 0.0
    for instruction, sign in folded_body:
        if sign < 0:
            for inverse in _inverse(instruction):
                out._append(inverse)
            phase -= _inverse_phase(instruction)
        else:
            out._append(instruction)
    for instruction in tail:
        out._append(instruction)
    out.global_phase = circuit.global_phase + phase
    reached = noisy_gate_count([i for i, _ in folded_body]) / base
    return out, reached


def folded_pairs(base: int, scale_factor: float) -> int:
    """G^-1 G pairs that bring `base` noisy gates nearest to `scale_factor` times as many
    (ties up), at least one for a factor above 1: folding adds gates two at a time, so
    the scales it reaches are 1 + 2k/G. Rounding the gates to add before halving them
    reached 1.67 for 1.2 on a 3-gate circuit (a red-team run)."""
    if scale_factor <= 1.0:
        return 0
    return max(1, math.floor(base * (scale_factor - 1.0) / 2 + 0.5))


def check_distinct_scales(reached: dict[float, float], base: int) -> None:
    """InvalidJob if two asked scale factors fold a circuit of `base` noisy gates to the same
    scale: they would be extrapolated as two noise levels from one (a fit to shot noise).
    A circuit without a noisy gate has nothing to fold: extrapolation takes its scale-1
    value (workers/mitigation/combine.py)."""
    if base == 0:
        return
    by_reached: dict[float, float] = {}
    for asked, scale in reached.items():
        twin = by_reached.setdefault(round(scale, 9), asked)
        if twin != asked:
            raise InvalidJob(
                f"zne scale factors {min(twin, asked):g} and {max(twin, asked):g} fold this "
                f"circuit to the same scale {scale:.4g}: it has {base} noisy gates, and folding "
                f"adds them in pairs (scales 1 + 2k/{base}); ask for factors at least "
                f"{2 / base:.3g} apart"
            )


def _fold_global(body, base: int, pairs: int) -> list[tuple[CircuitInstruction, int]]:
    """U (U^-1 U)^k, then U_s^-1 U_s over the shortest suffix with the remaining noisy gates."""
    full, needed = divmod(pairs, base)
    forward = [(i, 1) for i in body]
    backward = [(i, -1) for i in reversed(body)]
    out = list(forward)
    qubits = _all_qubits(body)
    for _ in range(full):
        out += [_barrier(qubits)] + backward + [_barrier(qubits)] + forward
    if needed:
        suffix: list[CircuitInstruction] = []
        count = 0
        for instruction in reversed(body):
            suffix.insert(0, instruction)
            count += _is_noisy(instruction)
            if count >= needed:
                break
        out += [_barrier(qubits)] + [(i, -1) for i in reversed(suffix)]
        out += [_barrier(qubits)] + [(i, 1) for i in suffix]
    return out


def _fold_random(body, base: int, pairs: int, rng: np.random.Generator):
    """Every noisy gate G -> G (G^-1 G)^k, plus one more fold on a random choice of them."""
    uniform, picks = divmod(pairs, base)
    noisy = [index for index, instruction in enumerate(body) if _is_noisy(instruction)]
    chosen = set()
    if picks:
        chosen = {noisy[i] for i in rng.choice(len(noisy), size=picks, replace=False)}
    out = []
    for index, instruction in enumerate(body):
        out.append((instruction, 1))
        if not _is_noisy(instruction):
            continue
        for _ in range(uniform + (index in chosen)):
            out += [(instruction, -1), (instruction, 1)]
    return out


def _barrier(qubits) -> tuple[CircuitInstruction, int]:
    return CircuitInstruction(Barrier(len(qubits)), qubits, ()), 1


def _all_qubits(body) -> tuple:
    seen: dict = {}
    for instruction in body:
        for qubit in instruction.qubits:
            seen.setdefault(qubit)
    return tuple(seen)


def _is_gate(instruction: CircuitInstruction) -> bool:
    return isinstance(instruction.operation, Gate | Barrier)


def _is_noisy(instruction: CircuitInstruction) -> bool:
    """A gate that is not virtual (measurements and barriers are not gates)."""
    return isinstance(instruction.operation, Gate) and instruction.operation.name not in (
        VIRTUAL_GATES
    )


def _inverse(instruction: CircuitInstruction) -> list[CircuitInstruction]:
    """The inverse in the native basis (sx^-1 = rz(pi) sx rz(pi), phase handled by caller)."""
    operation = instruction.operation
    if operation.name == "barrier":
        return [instruction]
    if operation.name == "sx":
        rz = RZGate(math.pi)
        return [
            instruction.replace(operation=rz),
            instruction.replace(operation=SXGate()),
            instruction.replace(operation=rz),
        ]
    return [instruction.replace(operation=operation.inverse())]


def _inverse_phase(instruction: CircuitInstruction) -> float:
    """Global phase to add so that the inverse's matrix is exact: rz(pi) sx rz(pi) =
    e^{-i pi/2} sx^-1, so the folded circuit gets +pi/2 for every sx inverted."""
    return -math.pi / 2 if instruction.operation.name == "sx" else 0.0


# --------------------------------------------------------------------------- extrapolation
@dataclass(frozen=True)
class Extrapolation:
    value: float
    std_error: float
    fallback: bool = False  # the exponential fit failed and the linear fit was used
    # d value / d (value at each scale factor): the weights of a linear fit, the exponential
    # fit's gradient; carries an error the scales share (the readout calibration's) over
    sensitivity: tuple[float, ...] = ()


def polynomial_order(num_factors: int) -> int:
    """Order used for "polynomial": quadratic from 3 scale factors, linear with 2."""
    return min(2, num_factors - 1)


@functools.cache
def mitiq_inference() -> ModuleType:
    """`mitiq.zne.inference`, imported at the first extrapolation rather than with this module.

    Importing mitiq imports every circuit frontend it converts (cirq, braket, sympy, matplotlib):
    about 3.4 s of CPU, which the preparation sandboxes (they fold, never extrapolate) paid at
    every start and every replacement (docs/performance.md, "Start-up"). Under the vendor SDK
    import lock: it loads qiskit's transpiler plugins, and with them qiskit_ibm_runtime, which
    a job's `require_extra` must not import at the same time (a valid job was dead-lettered
    as MissingExtra for the installed extra; a red-team run)."""
    with SDK_IMPORT_LOCK:
        import mitiq.zne.inference

    return mitiq.zne.inference


def _linear_map(method: str, scale_factors: Sequence[float], values: Sequence[float]) -> float:
    inference = mitiq_inference()
    if method == "linear":
        return float(inference.LinearFactory.extrapolate(scale_factors, values))
    if method == "richardson":
        return float(inference.RichardsonFactory.extrapolate(scale_factors, values))
    if method == "polynomial":
        order = polynomial_order(len(scale_factors))
        return float(inference.PolyFactory.extrapolate(scale_factors, values, order=order))
    raise ValueError(f"{method} is not a linear extrapolation")


def linear_weights(method: str, scale_factors: Sequence[float]) -> np.ndarray:
    """w with extrapolate(scale_factors, y) = w . y for the linear methods."""
    k = len(scale_factors)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array([_linear_map(method, scale_factors, list(np.eye(k)[i])) for i in range(k)])


def extrapolate(
    method: str,
    scale_factors: Sequence[float],
    values: Sequence[float],
    std_errors: Sequence[float],
    *,
    asymptote: float = 0.0,
    weights: np.ndarray | None = None,
) -> Extrapolation:
    """Zero-noise value and its standard error.

    `asymptote` is used by "exponential" only: y(s) = asymptote + b e^{-c s}, with the
    asymptote fixed (an observable's identity part: Pauli terms decay to 0 under
    depolarizing noise). Values that do not decay toward it, or a fit without spread, fall
    back to the linear fit.
    """
    y = np.asarray(values, dtype=float)
    se = np.asarray(std_errors, dtype=float)
    if method != "exponential":
        w = linear_weights(method, scale_factors) if weights is None else weights
        return Extrapolation(float(w @ y), float(math.sqrt(float((w**2) @ (se**2)))),
                             sensitivity=tuple(float(x) for x in w))
    fit_failed = mitiq_inference().ExtrapolationError
    try:
        if not decays_toward(scale_factors, y, asymptote):
            # mitiq takes the log of y - asymptote, putting 1e-6 in place of the values on
            # the wrong side: a "fit" of 0 ± 0, or an <Z> of -1.17 (red-team run).
            raise fit_failed("the values do not decay toward the asymptote")
        value = _exponential(scale_factors, y, asymptote)
        gradient = np.zeros(len(y))
        for i in range(len(y)):
            step = max(1e-6, 1e-3 * se[i])
            up, down = y.copy(), y.copy()
            up[i] += step
            down[i] -= step
            gradient[i] = (
                _exponential(scale_factors, up, asymptote)
                - _exponential(scale_factors, down, asymptote)
            ) / (2 * step)
        std_error = float(math.sqrt(float((gradient**2) @ (se**2))))
        if not (math.isfinite(value) and math.isfinite(std_error)) or std_error <= 0:
            raise fit_failed("degenerate exponential fit")
        return Extrapolation(value, std_error, sensitivity=tuple(float(x) for x in gradient))
    except (fit_failed, ValueError, RuntimeError, FloatingPointError):
        linear = extrapolate("linear", scale_factors, y, se)
        return Extrapolation(linear.value, linear.std_error, fallback=True,
                             sensitivity=linear.sensitivity)


def decays_toward(scale_factors: Sequence[float], values: np.ndarray, asymptote: float) -> bool:
    """All values on one side of the asymptote, their distance to it shrinking with the
    scale factor (the slope of log-distance on scale factor, by least squares, below 0)."""
    offsets = np.asarray(values, dtype=float) - asymptote
    if not (np.all(offsets > 0) or np.all(offsets < 0)):
        return False
    slope = np.polyfit(np.asarray(scale_factors, dtype=float), np.log(np.abs(offsets)), 1)[0]
    return bool(slope < 0)


def _exponential(scale_factors: Sequence[float], values: np.ndarray, asymptote: float) -> float:
    factory = mitiq_inference().ExpFactory
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(factory.extrapolate(scale_factors, list(values), asymptote=asymptote))
