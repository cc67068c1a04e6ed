"""Turn OpenQASM 2 or 3 text into a QuantumCircuit, or an InvalidCircuit error."""

from __future__ import annotations

import re
import threading
import unicodedata

from cachetools import LRUCache
from qiskit import QuantumCircuit, qasm2

from workers.errors import InvalidCircuit, ResourceLimitExceeded

# The first statement after leading whitespace and comments, if it is an OPENQASM header; the
# group is its major version.
_HEADER = re.compile(r"\A(?:\s+|//[^\n]*(?:\n|\Z)|/\*.*?\*/)*OPENQASM\s+(\d+)\b", re.DOTALL)
_MAX_MESSAGE = 200
CIRCUIT_FORMATS = ("auto", "qasm2", "qasm3")
# Parsed circuits by source text. OpenQASM 3 parsing (ANTLR) takes 1.4-17 ms per circuit here
# and a copy of the parsed circuit 0.01-0.02 ms, while a stream of jobs repeats few circuits.
# Bounded by the source text held plus a fixed allowance per circuit (so at most 2,048 small
# circuits): 8 MiB.
PARSE_CACHE_BUDGET = 8 * 2**20
PARSE_CACHE_ENTRY_ALLOWANCE = 4096
_QASM2_COMMENT = re.compile(r"//[^\n]*")  # OpenQASM 2 has line comments only
_QASM2_DEFINED = re.compile(r"\b(?:gate|opaque)\s+([A-Za-z_][A-Za-z0-9_]*)")


def detect_format(source: str) -> str:
    """ "qasm3" when the program opens with an `OPENQASM 3` header, otherwise "qasm2"."""
    return "qasm3" if declared_version(source) == "3" else "qasm2"


def declared_version(source: str) -> str | None:
    """The major version of the program's OPENQASM header, or None without one."""
    header = _HEADER.match(source)
    return header.group(1) if header else None


def resolve_format(source: str, fmt: str = "auto") -> str:
    """"qasm2" or "qasm3" for this source and asked format; InvalidCircuit for bad input."""
    if not isinstance(source, str):
        raise InvalidCircuit(f"circuit source must be text, not {type(source).__name__}")
    if fmt not in CIRCUIT_FORMATS:
        raise InvalidCircuit(f"unknown circuit format {fmt!r} (expected auto, qasm2 or qasm3)")
    if fmt == "auto":
        return detect_format(source)
    # Parsed as the other dialect, a program fails on its include or its first gate, and the
    # error does not say why (a red-team Go client's qasm3 job with an OPENQASM 2.0 header was
    # told qelib1.inc is forbidden).
    version = declared_version(source)
    if version is not None and version != fmt[-1]:
        raise InvalidCircuit(f"circuit_format is {fmt} but the program's header is OPENQASM "
                             f"{version}: send circuit_format auto, or the header's dialect")
    return fmt


def parse_circuit(source: str, fmt: str = "auto") -> QuantumCircuit:
    """Parse OpenQASM text; `fmt` is "auto", "qasm2" or "qasm3".

    OpenQASM 2 is read with Qiskit's legacy custom instructions, so older qelib1-era programs
    (u3, cu1, cu3, ...) load. OpenQASM 3 is read by `qiskit_qasm3_import`, which also handles
    user `gate` definitions and `input float` parameters. Whatever goes wrong while parsing
    (syntax errors, unsupported constructs, runaway recursion, a panic in the Rust parser)
    comes out as InvalidCircuit with a short message.
    """
    fmt = resolve_format(source, fmt)
    return _parsed.get_or_parse(source, fmt).copy()


def _parse(source: str, fmt: str) -> QuantumCircuit:
    try:
        if fmt == "qasm3":
            return _parse_qasm3(source)
        # No include search path: qelib1.inc is built into the parser, nothing else resolves
        # (static_count.check_includes refuses other includes before parsing).
        return qasm2.loads(source, include_path=(), custom_instructions=legacy_gates(source))
    except (KeyboardInterrupt, SystemExit):
        raise
    except ImportError:  # the worker's installation, not the program: no InvalidCircuit
        raise
    except MemoryError:  # in the sandbox: its address-space bound
        raise ResourceLimitExceeded(f"{fmt}: parsing ran out of memory") from None
    except OverflowError as exc:  # `delay[9223372036854775808dt]`: said only "int too large"
        raise InvalidCircuit(f"{fmt}: a number in the program is out of range ({exc})") from None
    except BaseException as exc:  # the Rust qasm2 parser panics with a BaseException
        if _out_of_memory(exc):  # a panic over a failed allocation (the sandbox's bound)
            raise ResourceLimitExceeded(f"{fmt}: parsing ran out of memory") from None
        raise InvalidCircuit(f"{fmt}: {_short(_describe(exc))}{_invisible(source)}") from None


def legacy_gates(source: str) -> list:
    """Qiskit's legacy qelib1 gates, less those the program defines itself.

    With the whole legacy list Qiskit's loader puts its own gate class in place of a
    program's definition of the same name: `gate cx a, b { x a; x b; }` ran as a CNOT, and
    `gate sx a { x a; }` after `include "qelib1.inc"` as an SX. Left out, the program's own
    gate keeps its definition (impostors.py then unrolls it), or redefining a gate the
    include already defines is the parser's "already defined" error.
    """
    defined = set(_QASM2_DEFINED.findall(_QASM2_COMMENT.sub(" ", source)))
    if not defined:
        return qasm2.LEGACY_CUSTOM_INSTRUCTIONS
    return [gate for gate in qasm2.LEGACY_CUSTOM_INSTRUCTIONS if gate.name not in defined]


def _out_of_memory(exc: BaseException) -> bool:
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 20:
        if isinstance(cause, MemoryError):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


class ParsedCircuits:
    """Parsed circuits by (format, source), least recently used out; never handed out itself."""

    def __init__(self, budget: int = PARSE_CACHE_BUDGET) -> None:
        self._circuits: LRUCache = LRUCache(maxsize=budget, getsizeof=lambda entry: entry[0])
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_parse(self, source: str, fmt: str) -> QuantumCircuit:
        key = (fmt, source)
        with self._lock:
            entry = self._circuits.get(key)
            if entry is not None:
                self.hits += 1
                return entry[1]
            self.misses += 1
        circuit = _parse(source, fmt)  # invalid programs raise and are not cached
        size = len(source) + PARSE_CACHE_ENTRY_ALLOWANCE
        if size <= self._circuits.maxsize:
            with self._lock:
                self._circuits[key] = (size, circuit)
        return circuit


_parsed = ParsedCircuits()


def load_qasm3_parser() -> None:
    """Import the OpenQASM 3 parser in the calling thread (a worker: its main thread, before
    any other starts). openqasm3's ANTLR package puts its import hook in place while it
    initialises, and the worker's warm-up thread imports it too (mitiq and the vendor SDKs
    do): a stage thread parsing a program meanwhile was handed the half-initialised package,
    and a valid job failed for good as InvalidCircuit "No module named
    'openqasm3._antlr.qasm3Lexer'" (a red-team run: 2 of 24 workers joining under load).
    About 50 ms once qiskit is loaded."""
    import qiskit_qasm3_import  # noqa: F401


def _parse_qasm3(source: str) -> QuantumCircuit:
    import qiskit_qasm3_import  # a worker loaded it at start; a sandbox on first use

    return qiskit_qasm3_import.parse(source)


def _describe(exc: BaseException) -> str:
    """The exception's message; for an ANTLR syntax error (which has none), where it happened."""
    text = " ".join(str(exc).split())
    if text:
        return text
    cause: BaseException | None = exc
    while cause is not None:
        for arg in (cause, *cause.args):
            token = getattr(arg, "offendingToken", None)
            if token is not None:
                return f"syntax error at line {token.line}:{token.column + 1} near {token.text!r}"
        cause = cause.__cause__ or cause.__context__
    return type(exc).__name__


def _invisible(source: str) -> str:
    """Where the program's first invisible non-ASCII character is (a no-break space, a soft
    hyphen, a byte-order mark, a zero-width space or joiner, a variation selector: pasted
    from a web page or an editor), which the parsers name badly: a no-break space before
    `OPENQASM 3` was `token recognition error at: ' '`, a soft hyphen `non-ASCII byte: C2`."""
    for index, char in enumerate(source):
        if char < "\x80" or not _is_invisible(char):
            continue
        line = source.count("\n", 0, index) + 1
        column = index - (source.rfind("\n", 0, index) + 1) + 1
        name = unicodedata.name(char, "unnamed")
        return (f" (line {line}, column {column} counted from 1, holds U+{ord(char):04X} "
                f"{name}, which OpenQASM does not read)")
    return ""


def _is_invisible(char: str) -> bool:
    category = unicodedata.category(char)
    return (category in ("Cf", "Cc", "Zs", "Zl", "Zp") or char == "\u034f"
            or "\ufe00" <= char <= "\ufe0f" or "\U000e0100" <= char <= "\U000e01ef")


def _short(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."
