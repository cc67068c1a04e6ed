"""What a job asks for: the circuit, its parameter bindings, observables, shots and backend.

These are plain data. Checking a job against a circuit, a backend and the configured limits
happens in `workers.circuits.validation`; here only the shape of the input is checked.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from workers.errors import InvalidJob, InvalidObservable, ParameterMismatch

PAULI_LETTERS = frozenset("IXYZ")

FOLDING_METHODS = ("global", "random_gates")
EXTRAPOLATION_METHODS = ("linear", "richardson", "polynomial", "exponential")
DEFAULT_SCALE_FACTORS = (1.0, 3.0, 5.0)
MAX_SCALE_FACTORS = 8  # distinct noise levels per job
MAX_SCALE_FACTOR = 15.0  # a folded circuit is up to this many times as long

# A "+" that starts a new term is followed by a Pauli letter; a "+" inside a number
# (e.g. "1e+3") is followed by a digit.
_TERM_SEPARATOR = re.compile(r"\+(?=\s*[A-Za-z])")


@dataclass(frozen=True)
class PauliTerm:
    """One weighted Pauli string, in Qiskit order: the rightmost character acts on qubit 0."""

    pauli: str
    coeff: float = 1.0


@dataclass(frozen=True)
class ObservableSpec:
    """A sum of weighted Pauli strings."""

    terms: tuple[PauliTerm, ...]

    def label(self) -> str:
        """A readable form such as "0.5*ZZ + 1.0*XX"."""
        return " + ".join(f"{float(t.coeff)!r}*{t.pauli}" for t in self.terms)


def parse_observable(text: str) -> ObservableSpec:
    """Parse the CLI form: "ZZ", "ZZ:0.5" or "ZZ:0.5+XX:-1" (a missing coefficient is 1).

    Raises InvalidObservable for anything else.
    """
    if not isinstance(text, str) or not text.strip():
        raise InvalidObservable("observable is empty")
    terms = []
    for chunk in _TERM_SEPARATOR.split(text):
        pauli, sep, coeff_text = chunk.partition(":")
        pauli = pauli.strip()
        if sep and not coeff_text.strip():
            raise InvalidObservable(f"missing coefficient after ':' in {chunk.strip()!r}")
        try:
            coeff = float(coeff_text) if sep else 1.0
        except ValueError:
            raise InvalidObservable(f"coefficient {coeff_text.strip()!r} is not a number") from None
        terms.append(checked_term(pauli, coeff))
    return checked_observable(terms)


def option_reader(record: Mapping, defaults: Any) -> Callable[[str], Any]:
    """Read a field of an Avro record, falling back to `defaults`' attribute where it is null."""

    def option(name: str) -> Any:
        value = record.get(name)
        return getattr(defaults, name) if value is None else value

    return option


# Above this total weight an observable's value, its standard error (squares) and their
# extrapolation overflow double precision: Z:1.7e308 + X:-1.7e308 was answered NaN, `done`.
MAX_OBSERVABLE_WEIGHT = 1e100


def checked_observable(terms: list[PauliTerm]) -> ObservableSpec:
    """The observable of `terms`, or InvalidObservable if its coefficients' absolute values
    add up past MAX_OBSERVABLE_WEIGHT."""
    weight = sum(abs(term.coeff) for term in terms)  # inf past the largest double
    if not weight <= MAX_OBSERVABLE_WEIGHT:
        raise InvalidObservable(
            f"the coefficients' absolute values add up to {weight:.3g} > "
            f"{MAX_OBSERVABLE_WEIGHT:g}: the value and its error would overflow double "
            "precision; scale the observable")
    return ObservableSpec(tuple(terms))


def checked_term(pauli: Any, coeff: Any) -> PauliTerm:
    """A PauliTerm, or InvalidObservable if `pauli` is not an IXYZ string or `coeff` not finite."""
    if not isinstance(pauli, str) or not pauli or not set(pauli) <= PAULI_LETTERS:
        raise InvalidObservable(f"Pauli string {pauli!r} must be non-empty and use only I, X, Y, Z")
    if isinstance(coeff, bool) or not isinstance(coeff, int | float):
        raise InvalidObservable(f"coefficient {coeff!r} of {pauli} is not a number")
    if not math.isfinite(coeff):
        raise InvalidObservable(f"coefficient {coeff!r} of {pauli} is not finite")
    return PauliTerm(pauli, float(coeff))


@dataclass(frozen=True)
class ZneSpec:
    """Zero-noise extrapolation: run at each noise `scale_factors` and extrapolate to zero.

    Construct through `checked()` (or `MitigationSpec.from_record`) to get validated options.
    """

    scale_factors: tuple[float, ...] = DEFAULT_SCALE_FACTORS
    folding: str = "global"
    extrapolation: str = "richardson"

    def checked(self) -> ZneSpec:
        """This spec, or InvalidJob naming the first bad option."""
        factors = self.scale_factors
        if isinstance(factors, str | bytes | Mapping) or not isinstance(factors, Iterable):
            raise InvalidJob("zne scale_factors must be a list of numbers")
        factors = tuple(factors)
        if any(isinstance(f, bool) or not isinstance(f, int | float) for f in factors):
            raise InvalidJob(f"zne scale_factors must be numbers, got {list(factors)!r}")
        factors = tuple(float(f) for f in factors)
        if len(factors) < 2:
            raise InvalidJob(f"zne needs at least 2 scale factors, got {len(factors)}")
        if len(factors) > MAX_SCALE_FACTORS:
            raise InvalidJob(f"zne allows at most {MAX_SCALE_FACTORS} scale factors")
        for f in factors:
            if not math.isfinite(f) or f < 1.0 or f > MAX_SCALE_FACTOR:
                raise InvalidJob(
                    f"zne scale factor {f!r} outside [1, {MAX_SCALE_FACTOR:g}]: folding can "
                    "only add noise"
                )
        if len(set(factors)) != len(factors):
            raise InvalidJob(f"zne scale factors must be distinct, got {list(factors)!r}")
        if self.folding not in FOLDING_METHODS:
            raise InvalidJob(
                f"unknown zne folding {self.folding!r} (expected {' or '.join(FOLDING_METHODS)})"
            )
        if self.extrapolation not in EXTRAPOLATION_METHODS:
            raise InvalidJob(
                f"unknown zne extrapolation {self.extrapolation!r} "
                f"(expected one of {', '.join(EXTRAPOLATION_METHODS)})"
            )
        return ZneSpec(factors, self.folding, self.extrapolation)


@dataclass(frozen=True)
class MitigationSpec:
    """The error mitigation a job asks for; the default applies none."""

    zne: ZneSpec | None = None
    readout: bool = False
    dynamical_decoupling: bool = False

    @property
    def enabled(self) -> bool:
        return self.zne is not None or self.readout or self.dynamical_decoupling

    def to_record(self) -> dict[str, Any]:
        """The Avro `Mitigation` record form (what `from_record` reads)."""
        zne = None
        if self.zne is not None:
            zne = {
                "scale_factors": list(self.zne.scale_factors),
                "folding": self.zne.folding,
                "extrapolation": self.zne.extrapolation,
            }
        return {
            "zne": zne,
            "readout": self.readout,
            "dynamical_decoupling": self.dynamical_decoupling,
        }

    @classmethod
    def from_record(cls, record: Any) -> MitigationSpec:
        """Read {"zne": None | {...}, "readout": bool, "dynamical_decoupling": bool}.

        None means no mitigation; a missing or null option takes its default. Anything else
        malformed raises InvalidJob.
        """
        if record is None:
            return cls()
        if not isinstance(record, Mapping):
            raise InvalidJob("mitigation must be a record")
        flags = {}
        for name in ("readout", "dynamical_decoupling"):
            value = record.get(name)
            if value is None:
                value = False
            if not isinstance(value, bool):
                raise InvalidJob(f"mitigation {name} must be true or false, got {value!r}")
            flags[name] = value
        zne = record.get("zne")
        if zne is not None:
            if not isinstance(zne, Mapping):
                raise InvalidJob("mitigation zne must be a record or null")
            option = option_reader(zne, ZneSpec())
            zne = ZneSpec(
                scale_factors=option("scale_factors"),
                folding=option("folding"),
                extrapolation=option("extrapolation"),
            ).checked()
        return cls(zne=zne, **flags)


@dataclass(frozen=True)
class JobSpec:
    """One job: a circuit with optional parameter sets and observables, for one backend."""

    workflow_id: str
    circuit: str
    circuit_format: str = "auto"
    parameter_sets: tuple[tuple[float, ...], ...] = ()
    observables: tuple[ObservableSpec, ...] = ()
    shots: int = 1024
    backend: str = "aer.ideal"
    seed: int | None = None
    mitigation: MitigationSpec = MitigationSpec()

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> JobSpec:
        """Build a spec from a decoded Avro JobRequest; keys this class does not use are ignored.

        Observables come as [{"terms": [{"pauli": "ZZ", "coeff": 0.5}, ...]}, ...], parameter
        sets as a list of lists of numbers, mitigation as the `Mitigation` record (see
        `MitigationSpec.from_record`). Missing or null optional fields take the defaults.
        """
        if not isinstance(record, Mapping):
            raise InvalidJob("job record is not a mapping")
        workflow_id = record.get("workflow_id")
        circuit = record.get("circuit")
        if not isinstance(workflow_id, str) or not workflow_id:
            raise InvalidJob("job record has no workflow_id")
        if not isinstance(circuit, str):
            raise InvalidJob("job record has no circuit text")
        # A byte-order mark, as editors on Windows save UTF-8, would hide an OPENQASM 3 header.
        circuit = circuit.removeprefix("\ufeff")
        defaults = cls(workflow_id, circuit)

        def field(name: str) -> Any:
            value = record.get(name)
            return getattr(defaults, name) if value is None else value

        return cls(
            workflow_id=workflow_id,
            circuit=circuit,
            circuit_format=field("circuit_format"),
            parameter_sets=_parameter_sets(field("parameter_sets")),
            observables=tuple(
                _observable_from_record(o)
                for o in _sequence(field("observables"), InvalidObservable, "observables")
            ),
            shots=field("shots"),
            backend=field("backend"),
            seed=_seed(record.get("seed")),
            mitigation=MitigationSpec.from_record(record.get("mitigation")),
        )


# The largest integer a JavaScript number holds exactly (Number.MAX_SAFE_INTEGER).
MAX_SEED = 2**53 - 1


def seed_out_of_range(value: Any) -> str | None:
    """Why a request's seed is refused, or None. The result echoes it
    (`provenance.seed_simulator`): one past 2^53 made every plain avsc reader of the shared
    results topic throw on that record ("potential precision loss"; a red-team run with a
    Node.js client). The workers refuse it as InvalidJob, qlane's clients before sending."""
    if value is None or (isinstance(value, int) and not isinstance(value, bool)
                         and abs(value) <= MAX_SEED):
        return None
    return (f"seed must be within +-{MAX_SEED} (2^53 - 1), an integer: the most a "
            f"JavaScript number holds exactly; got {value!r}")


def _seed(value: Any) -> int | None:
    if (problem := seed_out_of_range(value)) is not None:
        raise InvalidJob(problem)
    return value


def _sequence(value: Any, error: type[InvalidJob], what: str) -> list[Any]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        raise error(f"{what} must be a list")
    return list(value)


def _parameter_sets(value: Any) -> tuple[tuple[float, ...], ...]:
    sets = []
    for values in _sequence(value, ParameterMismatch, "parameter_sets"):
        items = _sequence(values, ParameterMismatch, "each parameter set")
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in items):
            raise ParameterMismatch("parameter values must be numbers")
        sets.append(tuple(float(v) for v in items))
    return tuple(sets)


def _observable_from_record(value: Any) -> ObservableSpec:
    if not isinstance(value, Mapping):
        raise InvalidObservable("each observable must be a record with 'terms'")
    terms = []
    for term in _sequence(value.get("terms"), InvalidObservable, "observable terms"):
        if not isinstance(term, Mapping):
            raise InvalidObservable("each observable term must be a record")
        coeff = term.get("coeff")
        terms.append(checked_term(term.get("pauli"), 1.0 if coeff is None else coeff))
    if not terms:
        raise InvalidObservable("an observable needs at least one term")
    return checked_observable(terms)
