"""The static count of what a program expands to, and the include policy (issue 11)."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.workers.conftest import ANSATZ3_QASM3, BELL_QASM2
from workers.circuits.parsing import parse_circuit
from workers.circuits.static_count import HUGE, check_program, count_program
from workers.errors import CircuitTooLarge, ForbiddenInclude, InvalidCircuit, ResourceLimitExceeded
from workers.limits import Limits


def doubling_qasm2(levels: int) -> str:
    """Gate definitions that each call the previous one twice: 2 * 2**levels gates."""
    lines = ['OPENQASM 2.0;', 'include "qelib1.inc";', "qreg q[2];",
             "gate g0 a, b { cx a, b; cx b, a; }"]
    lines += [f"gate g{i} a, b {{ g{i - 1} a, b; g{i - 1} b, a; }}" for i in range(1, levels + 1)]
    lines.append(f"g{levels} q[0], q[1];")
    return "\n".join(lines) + "\n"


def test_exponential_gate_definitions_are_counted_without_expanding() -> None:
    source = doubling_qasm2(40)
    assert len(source) < 1700
    started = time.perf_counter()
    size = count_program(source, "qasm2")
    assert time.perf_counter() - started < 0.1
    assert size.gate_instances == 2 * 2**40
    with pytest.raises(CircuitTooLarge, match="gate instances"):
        check_program(source, "qasm2", Limits())


@pytest.mark.parametrize("levels", [0, 3, 7])
def test_the_count_matches_the_parsed_circuit(levels: int) -> None:
    source = doubling_qasm2(levels)
    expanded = parse_circuit(source).decompose(reps=levels + 1)
    assert count_program(source, "qasm2").gate_instances == expanded.size()


def test_broadcast_over_registers_and_slices() -> None:
    source = ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[5] q;\nbit[5] c;\nh q;\n'
              "cx q[0:1], q[2:3];\nx q[{0, 2, 4}];\nc = measure q;\n")
    size = count_program(source, "qasm3")
    assert (size.qubits, size.clbits) == (5, 5)
    assert size.gate_instances == 5 + 2 + 3 + 5


def test_qasm3_loops_subroutines_and_pow_multiply() -> None:
    source = """OPENQASM 3.0;
include "stdgates.inc";
const int n = 10;
qubit[2] q;
def layer(qubit a, qubit b) { h a; cx a, b; }
for int i in [0:n - 1] {
    for int j in {1, 2, 3} { layer(q[0], q[1]); }
}
pow(4) @ x q[0];
"""
    size = count_program(source, "qasm3")
    assert size.loop_iterations == 10 + 10 * 3
    assert size.gate_instances == 10 * 3 * 2 + 4


@pytest.mark.parametrize(
    ("source", "match"),
    [
        ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2**40] q;\n', "qubits"),
        ('OPENQASM 3.0;\nconst int n = 1 << 62;\nqubit[1] q;\nbit[n] c;\n', "classical bits"),
        ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1000000];\n', "qubits"),
        ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit q;\n'
         "for int i in [0:1000000000000] { h q; }\n", "loop iterations"),
        ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit q;\n'
         "for int i in [0:999] { for int j in [0:999] { h q; } }\n", "loop iterations"),
        ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit q;\npow(2**40) @ x q;\n',
         "gate instances"),
        ('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit q;\nbit c;\n'
         "while (c == 0) { h q; c = measure q; }\n", "while loop"),
        ('OPENQASM 3.0;\nqubit q;\ndef f(qubit a) { f(a); f(a); }\nf(q);\n', "gate instances"),
        ('OPENQASM 3.0;\nconst int n = 2 ** (2 ** 100);\nqubit[n] q;\n', "qubits"),
    ],
)
def test_past_a_limit_is_refused_typed(source: str, match: str) -> None:
    with pytest.raises(CircuitTooLarge, match=match):
        check_program(source, "qasm3" if "OPENQASM 3" in source else "qasm2", Limits())


def test_standard_gates_cost_what_their_library_definitions_unroll_to() -> None:
    registers = "".join(f"qreg {r}[4];\n" for r in "abcde")
    size = count_program('OPENQASM 2.0;\ninclude "qelib1.inc";\n' + registers +
                         "c4x a,b,c,d,e;\nccx a[0],b[0],c[0];\n", "qasm2")
    assert size.gate_instances == 4 * 131 + 15
    # Without the include the names are unknown (the parser refuses them): 1 each.
    assert count_program("OPENQASM 2.0;\nqreg q[5];\nc4x q[0],q[1],q[2],q[3],q[4];\n",
                         "qasm2").gate_instances == 1
    # stdgates.inc: a global phase is no gate, pow(0.5) @ z (s) one.
    size = count_program('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit[2] q;\n'
                         "h q;\ns q[0];\npow(0.5) @ x q[1];\ngphase(0.1);\n", "qasm3")
    assert size.gate_instances == 2 + 1 + 1


def test_deep_nesting_is_refused_before_any_parser_recurses() -> None:
    source = 'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit q;\nrx(' + "(" * 5000 + "1" + \
        ")" * 5000 + ") q;\n"
    with pytest.raises(ResourceLimitExceeded, match="nest 5001 deep"):
        check_program(source, "qasm3", Limits())
    unbalanced = "OPENQASM 2.0;\n" + "{" * 100_000
    with pytest.raises(ResourceLimitExceeded):
        check_program(unbalanced, "qasm2", Limits())


def test_huge_constant_expressions_cost_nothing() -> None:
    started = time.perf_counter()
    size = count_program("OPENQASM 3.0;\nconst int a = 9 ** 9 ** 9 ** 9;\n"
                         "const int b = a << a;\nqubit[b * b] q;\n", "qasm3")
    assert time.perf_counter() - started < 0.1
    assert size.qubits == HUGE


@pytest.mark.parametrize("source", [BELL_QASM2, ANSATZ3_QASM3])
def test_ordinary_programs_pass(source: str) -> None:
    fmt = "qasm3" if "OPENQASM 3" in source else "qasm2"
    size = check_program(source, fmt, Limits())
    assert 0 < size.gate_instances < 100
    assert size.qubits == parse_circuit(source).num_qubits


# --- includes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "fmt"),
    [
        ('OPENQASM 2.0;\ninclude "/etc/passwd";\nqreg q[1];\n', "qasm2"),
        ('OPENQASM 2.0;\ninclude "qelib1.inc";\ninclude "../../secrets.inc";\n', "qasm2"),
        ('OPENQASM 3.0;\ninclude "/proc/self/environ";\nqubit q;\n', "qasm3"),
        ('OPENQASM 3.0;\ninclude "qelib1.inc";\nqubit q;\n', "qasm3"),
        ('OPENQASM 2.0;\ninclude "stdgates.inc";\nqreg q[1];\n', "qasm2"),
        ("OPENQASM 2.0;\ninclude '/etc/passwd';\nqreg q[1];\n", "qasm2"),
        ('OPENQASM 2.0;\nqreg q[1];\ngate g a { h a; }\ninclude "/etc/hostname";\n', "qasm2"),
    ],
)
def test_only_the_standard_include_files_resolve(source: str, fmt: str) -> None:
    with pytest.raises(ForbiddenInclude) as info:
        check_program(source, fmt, Limits())
    assert isinstance(info.value, InvalidCircuit)
    assert "root" not in str(info.value)


def test_an_include_error_never_echoes_the_file() -> None:
    """Even parsed without the static check, /etc/passwd is not read: no include path."""
    with pytest.raises(InvalidCircuit) as info:
        parse_circuit('OPENQASM 2.0;\ninclude "/etc/passwd";\nqreg q[1];\n', "qasm2")
    assert "root" not in str(info.value)


def test_standard_includes_pass() -> None:
    check_program('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[1];\nh q[0];\n', "qasm2",
                  Limits())
    check_program('OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit q;\nh q;\n', "qasm3",
                  Limits())


def test_a_long_include_name_is_quoted_short() -> None:
    source = 'OPENQASM 2.0;\ninclude "' + "a" * 5000 + '";\n'
    with pytest.raises(ForbiddenInclude) as info:
        check_program(source, "qasm2", Limits())
    assert len(str(info.value)) < 200


# --- structure, generated ------------------------------------------------------------

@st.composite
def gate_towers(draw) -> tuple[str, int]:
    """Nested gate definitions with random fan-outs, and the gate count they expand to."""
    fan_outs = draw(st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=30))
    lines = ['OPENQASM 2.0;', 'include "qelib1.inc";', "qreg q[3];",
             "gate g0 a, b { cx a, b; h a; }"]
    expected = 2
    for level, fan_out in enumerate(fan_outs, start=1):
        calls = " ".join(f"g{level - 1} a, b;" for _ in range(fan_out))
        lines.append(f"gate g{level} a, b {{ {calls} }}")
        expected *= fan_out
    times = draw(st.integers(min_value=1, max_value=3))
    lines += [f"g{len(fan_outs)} q[0], q[1];"] * times
    return "\n".join(lines) + "\n", expected * times


@given(gate_towers())
@settings(max_examples=200, deadline=None)
def test_nested_definitions_count_exactly(tower: tuple[str, int]) -> None:
    source, expected = tower
    assert count_program(source, "qasm2").gate_instances == min(expected, HUGE)


@given(st.lists(st.tuples(st.sampled_from(["[0:{n}]", "{{0, 1, 2}}", "[1:2:{n}]"]),
                          st.integers(min_value=1, max_value=10**6)), min_size=1, max_size=8))
@settings(max_examples=200, deadline=None)
def test_nested_loops_multiply(loops: list[tuple[str, int]]) -> None:
    body, expected_gates, starts, outer = "x q;", 1, 0, 1
    for form, n in reversed(loops):
        count = 3 if form.startswith("{{") else (n + 1 if form == "[0:{n}]" else (n - 1) // 2 + 1)
        body = f"for int i in {form.format(n=n)} {{ {body} }}"
        expected_gates *= count
    for form, n in loops:
        count = 3 if form.startswith("{{") else (n + 1 if form == "[0:{n}]" else (n - 1) // 2 + 1)
        outer *= count
        starts += outer
    size = count_program(f"OPENQASM 3.0;\nqubit q;\n{body}\n", "qasm3")
    assert size.gate_instances == min(expected_gates, HUGE)
    assert size.loop_iterations == min(starts, HUGE)


@given(st.text(alphabet='OPENQASM23.0;include"qelib1.inc"stdgates/etcpw{}()[]@ \n<>=+-*',
               max_size=300))
@settings(max_examples=300, deadline=None)
def test_any_text_is_counted_or_refused_typed_and_fast(text: str) -> None:
    started = time.perf_counter()
    try:
        check_program(text, "qasm3" if "OPENQASM 3" in text else "qasm2", Limits())
    except (CircuitTooLarge, ResourceLimitExceeded, ForbiddenInclude):
        pass
    # A generous bound: this guards against inputs that blow the count up (exponential
    # expansion), not against a busy CI host (0.51 s was seen once beside two brokers).
    assert time.perf_counter() - started < 2.0
