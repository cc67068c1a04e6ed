"""What an OpenQASM program will expand to, counted from its text before anything expands it.

A hostile program is small and expands to something huge: gate definitions that each call
the previous one twice (2^40 gate instances from 1.2 KB), a `for` loop over 10^12
iterations, `qubit[2**40] q;`. Parsers and the transpiler expand first and fail later, after
the memory is gone. `check_program` reads the tokens once, in linear time and memory, and
counts with memoised costs per gate and subroutine (never expanding anything):

* declared qubits and classical bits (`qreg`/`creg`, `qubit[n]`/`bit[n]`, sizes evaluated
  from literals and `const` integers);
* gate instances after unrolling user `gate` definitions and `def` subroutines, with
  broadcasting over whole registers, `pow(k) @` repetitions and loop bodies counted once per
  iteration; standard gates (qelib1.inc, stdgates.inc, U, CX) and measurements count 1;
* loop iterations (every start of a loop body, nested loops multiplied);
* the nesting depth of brackets and blocks (parsers recurse on it);
* the include files: only `qelib1.inc` (OpenQASM 2) and `stdgates.inc` (OpenQASM 3).

Whatever it cannot evaluate (a size from a non-constant expression) it leaves to the parser
and to the sandbox's bounds. Its own errors never quote more than a short piece of the
program's text. Arithmetic saturates at HUGE, so a count such as 2**(2**100) costs nothing.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from cachetools import LRUCache

from workers.errors import CircuitTooLarge, ForbiddenInclude, ResourceLimitExceeded
from workers.limits import Limits

HUGE = 2**128  # counts saturate here: far past any limit, cheap to compute with
STANDARD_INCLUDES = {"qasm2": "qelib1.inc", "qasm3": "stdgates.inc"}
_SHOWN = 40  # characters of program text an error message may quote

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>//[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<string>"[^"\n]*"?|'[^'\n]*'?)
    | (?P<number>(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][+-]?\d+)?[A-Za-z]*)
    | (?P<name>[A-Za-z_$\u0080-\U0010ffff][\w$\u0080-\U0010ffff]*)
    | (?P<op>->|\*\*|<<|>>|==|!=|<=|>=|&&|\|\||[^\s])
    """,
    re.VERBOSE | re.DOTALL,
)
_OPEN = {"(": ")", "[": "]", "{": "}"}
_CLOSE = {")", "]", "}"}
_CLASSICAL_TYPES = frozenset({
    "int", "uint", "float", "angle", "bool", "complex", "duration", "stretch", "array",
    "let", "creg_", "mutable", "readonly",
})
_SKIPPED_STATEMENTS = frozenset({
    "OPENQASM", "opaque", "extern", "return", "break", "continue", "end", "defcalgrammar",
    "pragma", "#pragma", "port", "frame", "waveform",
})
_STANDARD_STATEMENTS = frozenset({"barrier", "reset", "delay", "gphase"})
_MODIFIERS = frozenset({"ctrl", "negctrl", "inv", "pow"})


@dataclass(frozen=True)
class ProgramSize:
    """What a program declares and expands to (saturated at HUGE)."""

    qubits: int
    clbits: int
    gate_instances: int
    loop_iterations: int
    nesting_depth: int
    includes: tuple[str, ...]
    while_loops: int = 0


@dataclass
class _Cost:
    gates: int = 0
    iterations: int = 0

    def add(self, other: _Cost, times: int = 1) -> None:
        self.gates = _sat(self.gates + _sat(other.gates * times))
        self.iterations = _sat(self.iterations + _sat(other.iterations * times))


def _sat(value: int) -> int:
    return HUGE if value > HUGE else (-HUGE if value < -HUGE else value)


def shown(text: str) -> str:
    """A short, quoted piece of program text for an error message."""
    text = " ".join(text.split())
    return repr(text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "...")


def tokens(source: str) -> list[tuple[str, str]]:
    """(kind, text) of every token but spaces and comments."""
    found = []
    for match in _TOKEN.finditer(source):
        kind = match.lastgroup
        if kind not in ("space", "comment"):
            found.append((kind, match.group()))
    return found


def nesting_depth(toks: list[tuple[str, str]]) -> int:
    depth = deepest = 0
    for kind, text in toks:
        if kind != "op":
            continue
        if text in _OPEN:
            depth += 1
            deepest = max(deepest, depth)
        elif text in _CLOSE:
            depth = max(0, depth - 1)
    return deepest


def count_program(source: str, fmt: str, max_depth: int = 10**9) -> ProgramSize:
    """Count `source` ("qasm2" or "qasm3"); ResourceLimitExceeded past `max_depth` nesting."""
    toks = tokens(source)
    depth = nesting_depth(toks)
    if depth > max_depth:
        raise ResourceLimitExceeded(
            f"brackets and blocks nest {depth} deep > {max_depth} (the limit on nesting)"
        )
    counter = _Counter(toks, fmt)
    total = counter.block(top=True)
    return ProgramSize(
        qubits=counter.qubits,
        clbits=counter.clbits,
        gate_instances=total.gates,
        loop_iterations=total.iterations,
        nesting_depth=depth,
        includes=tuple(counter.includes),
        while_loops=counter.while_loops,
    )


def check_includes(includes: tuple[str, ...], fmt: str) -> None:
    allowed = STANDARD_INCLUDES.get(fmt, "")
    for name in includes:
        if name != allowed:
            raise ForbiddenInclude(
                f"include {shown(name)} refused: programs may include only the standard "
                f"{'qelib1.inc (OpenQASM 2)' if fmt == 'qasm2' else 'stdgates.inc (OpenQASM 3)'}"
            )


def check_program(source: str, fmt: str, limits: Limits) -> ProgramSize:
    """Count the program and refuse it, typed and permanent, past any configured limit."""
    key = (fmt, limits.max_nesting_depth, source)
    with _counted_lock:
        size = _counted.get(key)
    if size is None:
        size = count_program(source, fmt, limits.max_nesting_depth)
        if len(source) <= _COUNTED_SOURCE_MAX:
            with _counted_lock:
                _counted[key] = size
    check_includes(size.includes, fmt)
    if size.while_loops:
        raise CircuitTooLarge(
            "program has a while loop: its iterations cannot be bounded before it runs"
        )
    if size.qubits > limits.max_qubits:
        raise CircuitTooLarge(f"program declares {_n(size.qubits)} qubits > {limits.max_qubits}")
    if size.clbits > limits.max_clbits:
        raise CircuitTooLarge(
            f"program declares {_n(size.clbits)} classical bits > {limits.max_clbits}"
        )
    if size.loop_iterations > limits.max_loop_iterations:
        raise CircuitTooLarge(
            f"program runs {_n(size.loop_iterations)} loop iterations > "
            f"{limits.max_loop_iterations}"
        )
    if size.gate_instances > limits.max_gate_instances:
        raise CircuitTooLarge(
            f"program expands to {_n(size.gate_instances)} gate instances > "
            f"{limits.max_gate_instances}"
        )
    return size


_LIBRARY_COSTS: dict[str, dict[str, int]] = {}


def library_costs(fmt: str) -> dict[str, int]:
    """Gate instances per standard gate, counted from Qiskit's own copy of the include file
    (qelib1.inc for "qasm2", stdgates.inc for "qasm3")."""
    costs = _LIBRARY_COSTS.get(fmt)
    if costs is None:
        costs = {}
        try:
            import qiskit

            text = (Path(qiskit.__file__).parent / "qasm" / "libs" /
                    STANDARD_INCLUDES[fmt]).read_text()
        except (OSError, KeyError):
            text = ""
        counter = _Counter(tokens(text), fmt)
        counter.block(top=True)
        costs = _LIBRARY_COSTS[fmt] = dict(counter.callables)
    return costs


# Counts by program text: a stream of jobs repeats few programs (1 ms per count saved).
_counted: LRUCache = LRUCache(maxsize=1024)
_COUNTED_SOURCE_MAX = 16_384
_counted_lock = threading.Lock()


def _n(value: int) -> str:
    if value >= HUGE:
        return "more than 2^128"
    if value >= 10**7:
        return f"~2^{value.bit_length() - 1}"
    return str(value)


class _Counter:
    """One pass over the tokens; costs of gates and subroutines memoised by name."""

    def __init__(self, toks: list[tuple[str, str]], fmt: str) -> None:
        self.toks = toks
        self.fmt = fmt
        self.i = 0
        self.qubits = 0
        self.clbits = 0
        self.includes: list[str] = []
        self.constants: dict[str, int] = {}
        self.registers: dict[str, int] = {}
        self.callables: dict[str, int] = {}  # gate or subroutine name -> gate instances
        self.while_loops = 0

    # --- cursor ----------------------------------------------------------------------
    def peek(self, ahead: int = 0) -> str:
        index = self.i + ahead
        return self.toks[index][1] if index < len(self.toks) else ""

    def kind(self, ahead: int = 0) -> str:
        index = self.i + ahead
        return self.toks[index][0] if index < len(self.toks) else ""

    def take(self) -> str:
        text = self.peek()
        self.i += 1
        return text

    def at_end(self) -> bool:
        return self.i >= len(self.toks)

    def group(self) -> list[tuple[str, str]]:
        """The tokens inside the bracket group starting here (which is consumed)."""
        opener = self.take()
        closer = _OPEN.get(opener)
        start = self.i
        depth = 1
        while not self.at_end():
            text = self.take()
            if self.toks[self.i - 1][0] != "op":
                continue
            if text in _OPEN:
                depth += 1
            elif text in _CLOSE:
                depth -= 1
                if depth == 0:
                    return self.toks[start : self.i - 1] if text == closer else []
        return self.toks[start : self.i]

    def skip_statement(self) -> list[tuple[str, str]]:
        """Up to and including the next ';' at this level (not past a closing '}')."""
        start = self.i
        while not self.at_end():
            text = self.peek()
            if self.kind() == "op" and text in _OPEN:
                self.group()
                continue
            if self.kind() == "op" and text == "}":
                return self.toks[start : self.i]
            self.i += 1
            if self.kind(-1) == "op" and text == ";":
                return self.toks[start : self.i - 1]
        return self.toks[start : self.i]

    # --- statements ------------------------------------------------------------------
    def block(self, top: bool = False) -> _Cost:
        """Statements up to the '}' closing this block (consumed) or the end."""
        cost = _Cost()
        while not self.at_end():
            if self.kind() == "op" and self.peek() == "}":
                self.i += 1
                if not top:
                    return cost
                continue
            before = self.i
            cost.add(self.statement())
            if self.i == before:  # never stall on a token nothing consumes
                self.i += 1
        return cost

    def body(self) -> _Cost:
        """A `{ block }` or one statement (loop and branch bodies)."""
        if self.kind() == "op" and self.peek() == "{":
            self.i += 1
            return self.block()
        return self.statement()

    def statement(self) -> _Cost:
        word = self.peek()
        kind = self.kind()
        if kind == "op":
            if word == "{":
                self.i += 1
                return self.block()
            self.i += 1
            return _Cost()
        if kind != "name":
            self.skip_statement()
            return _Cost()
        handler = getattr(self, f"_st_{word}", None)
        if handler is not None:
            return handler()
        if word in _SKIPPED_STATEMENTS or word in _CLASSICAL_TYPES:
            self.skip_statement()
            return _Cost()
        return self.call_or_assignment()

    def _st_include(self) -> _Cost:
        self.i += 1
        name = self.peek()
        if self.kind() == "string":
            name = name[1:-1] if len(name) >= 2 and name[-1] == name[0] else name[1:]
        self.includes.append(name)
        if name == STANDARD_INCLUDES.get(self.fmt):
            # Standard gates cost what their definitions in the library unroll to (qelib1's
            # c4x: 131), so a program of many cheap-looking c4x is counted for what it is.
            self.callables.update(library_costs(self.fmt))
        self.skip_statement()
        return _Cost()

    def _declare(self, size: int | None, quantum: bool, name: str) -> None:
        size = 1 if size is None else max(0, size)
        if quantum:
            self.qubits = _sat(self.qubits + size)
        else:
            self.clbits = _sat(self.clbits + size)
        if name:
            self.registers[name] = size

    def _st_qreg(self, quantum: bool = True) -> _Cost:
        self.i += 1
        name = self.take() if self.kind() == "name" else ""
        size = None
        if self.peek() == "[":
            size = self.evaluate(self.group())
        self._declare(size, quantum, name)
        self.skip_statement()
        return _Cost()

    def _st_creg(self) -> _Cost:
        return self._st_qreg(quantum=False)

    def _st_qubit(self, quantum: bool = True) -> _Cost:
        self.i += 1
        size = None
        if self.peek() == "[":
            size = self.evaluate(self.group())
        name = self.take() if self.kind() == "name" else ""
        self._declare(size, quantum, name)
        self.skip_statement()
        return _Cost()

    def _st_bit(self) -> _Cost:
        return self._st_qubit(quantum=False)

    def _st_input(self) -> _Cost:
        self.i += 1
        if self.peek() in ("bit", "qubit"):
            return self.statement()
        self.skip_statement()
        return _Cost()

    _st_output = _st_input

    def _st_const(self) -> _Cost:
        self.i += 1
        if self.peek() in ("bit", "qubit"):
            return self.statement()
        self.i += 1  # the type
        if self.peek() == "[":
            self.group()
        name = self.take() if self.kind() == "name" else ""
        rest = self.skip_statement()
        if name and rest and rest[0][1] == "=":
            value = self.evaluate(rest[1:])
            if value is not None:
                self.constants[name] = value
        return _Cost()

    def _definition(self, groups: tuple[str, ...], while_open: int | None = None):
        """Name and body cost of a `gate`/`def` definition, or None for a declaration without
        a body. `while_open` is what the name costs inside its own body (recursion)."""
        self.i += 1
        name = self.take() if self.kind() == "name" else ""
        while not self.at_end() and self.peek() not in ("{", ";", "}"):
            if self.peek() in groups:
                self.group()
            else:
                self.i += 1
        if self.peek() != "{":
            self.skip_statement()
            return name, None
        self.i += 1
        if while_open is not None:
            self.callables[name] = while_open
        saved, self.registers = self.registers, {}  # arguments are single qubits
        body = self.block()
        self.registers = saved
        return name, body

    def _st_gate(self) -> _Cost:
        name, body = self._definition(("(",))
        if body is not None:
            self.callables[name] = max(1, body.gates)
        return _Cost()

    def _st_def(self) -> _Cost:
        # A call to itself inside its body is unbounded recursion.
        name, body = self._definition(("(", "["), while_open=HUGE)
        if body is not None:
            self.callables[name] = _sat(body.gates + body.iterations)
        return _Cost()

    _st_defcal = _st_def
    _st_cal = _st_def

    def _st_for(self) -> _Cost:
        self.i += 1
        while not self.at_end() and self.peek() != "in" and self.peek() not in ("{", ";"):
            if self.peek() == "[":
                self.group()
            else:
                self.i += 1
        if self.peek() != "in":
            self.skip_statement()
            return _Cost()
        self.i += 1
        iterations = self.iteration_count()
        body = self.body()
        loop = _Cost(iterations=iterations)
        loop.add(body, iterations)
        return loop

    def iteration_count(self) -> int:
        if self.peek() == "[":
            return self.range_length(self.group(), default=HUGE)
        if self.peek() == "{":
            items = self.group()
            return 1 + sum(1 for kind, text in items if kind == "op" and text == ",")
        if self.kind() == "name":  # a register or array: its size if known
            name = self.take()
            if self.peek() == "[":
                return self.range_length(self.group(), default=HUGE)
            return self.registers.get(name, HUGE)
        return HUGE

    def _st_while(self) -> _Cost:
        self.i += 1
        if self.peek() == "(":
            self.group()
        self.body()
        self.while_loops += 1  # nothing bounds its iterations before it runs
        return _Cost()

    def _st_if(self) -> _Cost:
        self.i += 1
        if self.peek() == "(":
            self.group()
        cost = self.body()
        if self.peek() == "else":
            self.i += 1
            cost.add(self.body())
        return cost

    def _st_box(self) -> _Cost:
        self.i += 1
        if self.peek() == "[":
            self.group()
        return self.body()

    def _st_switch(self) -> _Cost:
        self.i += 1
        if self.peek() == "(":
            self.group()
        return self.body()

    def _st_case(self) -> _Cost:
        while not self.at_end() and self.peek() not in ("{", ";", "}"):
            self.i += 1
        return self.body()

    def _st_default(self) -> _Cost:
        self.i += 1
        return self.body()

    def _st_measure(self) -> _Cost:
        self.i += 1
        operands = self.skip_statement()
        source = []
        for token in operands:
            if token[1] == "->":
                break
            source.append(token)
        return _Cost(gates=self.broadcast(source))

    def call_or_assignment(self) -> _Cost:
        times = 1
        while self.peek() in _MODIFIERS:
            modifier = self.take()
            if self.peek() == "(":
                value = self.evaluate(self.group())
                if modifier == "pow" and value is not None:  # pow(k) @ g: k times g
                    times = _sat(times * max(1, abs(value)))
            if self.peek() == "@":
                self.i += 1
        name = self.take()
        if self.peek() == "(":
            self.group()
        if self.peek() == "[" and name not in self.registers:
            self.group()  # a duration designator
        rest = self.skip_statement()
        texts = [text for _, text in rest]
        if "=" in texts:  # an assignment (operands of a gate call never hold one)
            if "measure" in texts:
                after = texts.index("measure") + 1
                return _Cost(gates=self.broadcast(rest[after:]))
            return _Cost()
        if name == "gphase":
            return _Cost()  # a global phase, no gate
        if name in _STANDARD_STATEMENTS:
            return _Cost(gates=self.broadcast(rest))
        cost = self.callables.get(name, 1)
        return _Cost(gates=_sat(_sat(cost * times) * self.broadcast(rest)))

    # --- operands and constants ------------------------------------------------------
    def broadcast(self, operands: list[tuple[str, str]]) -> int:
        """How many times a statement applies: the largest operand size (whole registers)."""
        widest = 1
        index = 0
        while index < len(operands):
            kind, text = operands[index]
            if kind == "name" and text in self.registers:
                size = self.registers[text]
                if index + 1 < len(operands) and operands[index + 1][1] == "[":
                    inner, index = _bracket(operands, index + 1)
                    size = self.selection_size(inner, size)
                else:
                    index += 1
                widest = max(widest, size)
                continue
            index += 1
        return widest

    def selection_size(self, inner: list[tuple[str, str]], register: int) -> int:
        texts = [text for _, text in inner]
        if inner and inner[0][1] == "{":
            return 1 + texts.count(",")
        if ":" in texts:
            return min(register, self.range_length(inner, default=register))
        return 1

    def range_length(self, inner: list[tuple[str, str]], default: int) -> int:
        parts: list[list[tuple[str, str]]] = [[]]
        depth = 0
        for token in inner:
            if token[0] == "op" and token[1] in _OPEN:
                depth += 1
            elif token[0] == "op" and token[1] in _CLOSE:
                depth -= 1
            if depth == 0 and token[1] == ":":
                parts.append([])
            else:
                parts[-1].append(token)
        values = [self.evaluate(part) for part in parts]
        if any(v is None for v in values) or len(values) not in (2, 3):
            return default
        start, *step, stop = values
        step_value = step[0] if step else 1
        if step_value == 0:
            return HUGE
        # OpenQASM 3 ranges include their end.
        count = (stop - start) // step_value + 1
        return max(0, _sat(count))

    def evaluate(self, expression: list[tuple[str, str]]) -> int | None:
        """An integer constant expression's value, or None if it is not one."""
        return _Evaluator(expression, self.constants).value()


def _bracket(operands: list[tuple[str, str]], start: int) -> tuple[list[tuple[str, str]], int]:
    depth = 0
    for index in range(start, len(operands)):
        text = operands[index][1]
        if operands[index][0] == "op" and text in _OPEN:
            depth += 1
        elif operands[index][0] == "op" and text in _CLOSE:
            depth -= 1
            if depth == 0:
                return operands[start + 1 : index], index + 1
    return operands[start + 1 :], len(operands)


_BINARY = {
    "||": 1, "&&": 2, "|": 3, "^": 4, "&": 5, "==": 6, "!=": 6,
    "<": 7, ">": 7, "<=": 7, ">=": 7, "<<": 8, ">>": 8, "+": 9, "-": 9,
    "*": 10, "/": 10, "%": 10, "**": 12,
}


class _Evaluator:
    """Integer constant expressions (literals, consts, + - * / % ** << >> and parentheses),
    saturating at HUGE so that no exponent or shift is ever expensive."""

    def __init__(self, toks: list[tuple[str, str]], constants: dict[str, int]) -> None:
        self.toks = toks
        self.constants = constants
        self.i = 0

    def value(self) -> int | None:
        try:
            result = self.expression(0)
        except (ValueError, ZeroDivisionError, IndexError, RecursionError):
            return None
        return result if self.i == len(self.toks) else None

    def expression(self, floor: int) -> int:
        left = self.unary()
        while self.i < len(self.toks):
            op = self.toks[self.i][1]
            power = _BINARY.get(op)
            if power is None or power < floor:
                break
            self.i += 1
            right = self.expression(power if op == "**" else power + 1)
            left = _apply(op, left, right)
        return left

    def unary(self) -> int:
        kind, text = self.toks[self.i]
        self.i += 1
        if text == "-":
            return -self.unary()
        if text in ("+", "~"):
            value = self.unary()
            return value if text == "+" else ~value
        if text == "(":
            value = self.expression(0)
            if self.toks[self.i][1] != ")":
                raise ValueError("unclosed")
            self.i += 1
            return value
        if kind == "number":
            return _integer(text)
        if kind == "name" and text in self.constants:
            return self.constants[text]
        raise ValueError(text)


def _integer(text: str) -> int:
    text = text.replace("_", "")
    lowered = text.lower()
    if lowered.startswith(("0x", "0o", "0b")):
        return int(text, 0)
    if not text.isdigit():
        raise ValueError(text)  # a float or a duration: not an integer constant
    if len(text) > 40:
        return HUGE
    return int(text)


def _apply(op: str, left: int, right: int) -> int:
    if op == "**":
        if right < 0:
            raise ValueError("negative exponent")
        if abs(left) <= 1:
            return left**right if right < 2**20 else (left if right % 2 else abs(left))
        if right * max(1, abs(left).bit_length()) > 256:
            return HUGE if left > 0 or right % 2 == 0 else -HUGE
        return _sat(left**right)
    if op in ("<<", ">>"):
        if right < 0:
            raise ValueError("negative shift")
        if op == ">>":
            return left >> min(right, 512)
        return _sat(left << right) if right <= 256 else (HUGE if left else 0)
    result = {
        "+": lambda: left + right, "-": lambda: left - right, "*": lambda: left * right,
        "/": lambda: int(left / right) if abs(left) < 2**53 else left // right,
        "%": lambda: left % right,
        "|": lambda: left | right, "^": lambda: left ^ right, "&": lambda: left & right,
        "==": lambda: int(left == right), "!=": lambda: int(left != right),
        "<": lambda: int(left < right), ">": lambda: int(left > right),
        "<=": lambda: int(left <= right), ">=": lambda: int(left >= right),
        "&&": lambda: int(bool(left) and bool(right)), "||": lambda: int(bool(left) or bool(right)),
    }[op]()
    return _sat(result)
