from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qiskit.quantum_info import Operator, Statevector

from tests.unit.workers.conftest import ANSATZ3_QASM3, BELL_QASM2
from workers.circuits.parsing import (
    PARSE_CACHE_ENTRY_ALLOWANCE,
    ParsedCircuits,
    detect_format,
    parse_circuit,
)
from workers.errors import InvalidCircuit

LEGACY_QASM2 = """OPENQASM 2.0;
include "qelib1.inc";
gate majority a,b,c { cx c,b; cx c,a; ccx a,b,c; }
gate rot(theta, phi) q { u3(theta, phi, 0) q; }
qreg q[3];
creg c[3];
u3(pi/2, 0, pi) q[0];
u2(0, pi) q[1];
u1(pi/4) q[2];
cu1(pi/8) q[0], q[1];
cu3(0.1, 0.2, 0.3) q[1], q[2];
rot(0.5, 0.25) q[2];
majority q[0], q[1], q[2];
barrier q;
measure q -> c;
"""

QASM3_GATE_AND_INPUT = """OPENQASM 3.0;
include "stdgates.inc";
input float theta;
gate entangle(t) a, b {
    ry(t) a;
    cx a, b;
}
qubit[2] q;
bit[2] c;
entangle(theta) q[0], q[1];
c = measure q;
"""


def test_qasm2_bell() -> None:
    circuit = parse_circuit(BELL_QASM2)
    assert (circuit.num_qubits, circuit.num_clbits) == (2, 2)
    assert circuit.count_ops() == {"h": 1, "cx": 1, "measure": 2}


def test_qasm2_legacy_instructions_and_custom_gates() -> None:
    circuit = parse_circuit(LEGACY_QASM2, "qasm2")
    ops = circuit.count_ops()
    for name in ("u3", "u2", "u1", "cu1", "cu3", "rot", "majority"):
        assert ops[name] == 1, name
    # The user gate keeps its body: rot(0.5, 0.25) is u3(0.5, 0.25, 0).
    rot = next(i.operation for i in circuit.data if i.operation.name == "rot")
    assert rot.definition.data[0].operation.name == "u3"
    assert rot.definition.data[0].operation.params == [0.5, 0.25, 0]


def test_qasm3_gate_definition_and_input_parameter() -> None:
    circuit = parse_circuit(QASM3_GATE_AND_INPUT)
    assert [p.name for p in circuit.parameters] == ["theta"]
    bound = circuit.remove_final_measurements(inplace=False).assign_parameters([math.pi / 2])
    amplitudes = Statevector(bound).probabilities_dict()
    assert amplitudes == pytest.approx({"00": 0.5, "11": 0.5})


def test_qasm3_expressions_in_parameters() -> None:
    circuit = parse_circuit(ANSATZ3_QASM3)
    assert [p.name for p in circuit.parameters] == ["a", "b", "c", "d", "e"]
    assert circuit.num_qubits == 3


def test_format_detection_skips_comments() -> None:
    assert detect_format("// header\n/* block\n comment */ OPENQASM 3.0; qubit q;") == "qasm3"
    assert detect_format("OPENQASM 2.0; qreg q[1];") == "qasm2"
    assert detect_format("qubit q; // OPENQASM 3") == "qasm2"


def test_explicit_format_overrides_detection() -> None:
    with pytest.raises(InvalidCircuit, match="qasm2"):
        parse_circuit(QASM3_GATE_AND_INPUT, "qasm2")


def test_a_format_contradicting_the_programs_header_is_named() -> None:
    for fmt, source, header in (("qasm3", BELL_QASM2, "2"), ("qasm2", QASM3_GATE_AND_INPUT, "3")):
        with pytest.raises(InvalidCircuit, match=f"circuit_format is {fmt} but the program's "
                                                 f"header is OPENQASM {header}"):
            parse_circuit(source, fmt)
    assert parse_circuit(BELL_QASM2, "qasm2").num_qubits == 2
    assert parse_circuit("qubit[1] q;\nU(0, 0, 0) q[0];", "qasm3").num_qubits == 1  # no header


def test_qasm2_and_qasm3_of_one_circuit_agree() -> None:
    qasm3 = """OPENQASM 3.0;
include "stdgates.inc";
qubit[2] q;
h q[0];
cx q[0], q[1];
"""
    qasm2 = BELL_QASM2.replace("measure q -> c;\n", "")
    assert Operator(parse_circuit(qasm3)).equiv(Operator(parse_circuit(qasm2)))


@pytest.mark.parametrize(
    "source",
    [
        "hello world",
        "OPENQASM 2.0; qreg q[1]; h q[0];",  # no qelib1.inc: h unknown
        'OPENQASM 2.0; include "qelib1.inc"; qreg q[1]; cx q[0], q[0];',
        'OPENQASM 2.0; include "nope.inc";',
        "OPENQASM 3.0; qubit q; undefined_gate q;",
        "OPENQASM 3.0; qubit q; h q",  # missing semicolon
        "OPENQASM 3; " + "(" * 2000 + ";",
        # Deep but well-formed nesting: the qasm3 converter recurses past Python's limit.
        'OPENQASM 3.0; include "stdgates.inc"; qubit q; rx('
        + "(" * 3000
        + "1"
        + ")" * 3000
        + ") q;",
        "OPENQASM 2.0;\x00",
    ],
)
def test_garbage_raises_invalid_circuit(source: str) -> None:
    with pytest.raises(InvalidCircuit) as info:
        parse_circuit(source)
    assert 0 < len(str(info.value)) <= 210


def test_unknown_format_and_non_text() -> None:
    with pytest.raises(InvalidCircuit, match="format"):
        parse_circuit(BELL_QASM2, "qasm4")
    with pytest.raises(InvalidCircuit):
        parse_circuit(b"OPENQASM 2.0;")  # type: ignore[arg-type]


_CORPUS = [BELL_QASM2, LEGACY_QASM2, QASM3_GATE_AND_INPUT, ANSATZ3_QASM3]


@st.composite
def _mutated_programs(draw: st.DrawFn) -> str:
    source = draw(st.sampled_from(_CORPUS))
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(source)))
        end = draw(st.integers(start, min(len(source), start + 20)))
        source = source[:start] + draw(st.text(max_size=8)) + source[end:]
    return source


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    source=st.one_of(st.text(max_size=200), _mutated_programs()),
    fmt=st.sampled_from(["auto", "qasm2", "qasm3"]),
)
def test_fuzz_only_invalid_circuit_escapes(source: str, fmt: str) -> None:
    try:
        parse_circuit(source, fmt)
    except InvalidCircuit:
        pass


# --- the parse cache ----------------------------------------------------------------------
def test_a_repeated_source_is_parsed_once_and_each_caller_gets_its_own_copy():
    cache = ParsedCircuits()
    first = cache.get_or_parse(ANSATZ3_QASM3, "qasm3")
    again = cache.get_or_parse(ANSATZ3_QASM3, "qasm3")
    assert (cache.misses, cache.hits) == (1, 1)
    assert again is first  # the cache's own object; parse_circuit copies it

    handed_out = parse_circuit(ANSATZ3_QASM3)
    handed_out.measure_all()
    handed_out.assign_parameters([0.1] * handed_out.num_parameters, inplace=True)
    fresh = parse_circuit(ANSATZ3_QASM3)
    assert fresh == parse_circuit(ANSATZ3_QASM3)
    assert fresh.num_parameters > 0 and "measure" not in fresh.count_ops()


def test_invalid_programs_are_not_cached():
    cache = ParsedCircuits()
    for _ in range(2):
        with pytest.raises(InvalidCircuit):
            cache.get_or_parse("OPENQASM 3.0; qubit[1] q; nonsense q;", "qasm3")
    assert (cache.misses, cache.hits) == (2, 0)


def test_the_cache_is_bounded():
    cache = ParsedCircuits(budget=3 * PARSE_CACHE_ENTRY_ALLOWANCE)
    sources = [f"OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[{n}];\nh q[0];\n"
               for n in range(1, 6)]
    for source in sources:
        cache.get_or_parse(source, "qasm2")
    cache.get_or_parse(sources[0], "qasm2")  # evicted long ago
    assert (cache.misses, cache.hits) == (6, 0)
    cache.get_or_parse(sources[-1], "qasm2")
    assert cache.hits == 1


@pytest.mark.parametrize(("source", "said"), [
    ("\u00a0OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[2] q;\nh q[0];\n",
     "line 1, column 1 counted from 1, holds U+00A0 NO-BREAK SPACE"),
    ("OPENQASM 3.0;\ninclude \"stdgates.inc\";\nqubit[2] q;\nh\u200b q[0];\n",
     "line 4, column 2 counted from 1, holds U+200B ZERO WIDTH SPACE"),
    ("\ufeffOPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[2];\nh q[0];\n",
     "line 1, column 1 counted from 1, holds U+FEFF"),
    ("OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[2];\nh\u00ad q[0];\n",
     "holds U+00AD SOFT HYPHEN"),
    ("OPENQASM 2.0;\ninclude \"qelib1.inc\";\nqreg q[2];\nh\u034f q[0];\n",
     "holds U+034F COMBINING GRAPHEME JOINER"),
    ("OPENQASM 3.0;\nqubit[1] q;\nh\ufe0f q[0];\n", "holds U+FE0F VARIATION SELECTOR-16"),
])
def test_an_invisible_character_is_named_where_it_is(source, said):
    """A no-break space before `OPENQASM 3` was told `token recognition error at: ' '`
    (a red-team run): the character cannot be seen in the message."""
    with pytest.raises(InvalidCircuit) as refused:
        parse_circuit(source)
    assert said in str(refused.value)


def test_a_job_file_saved_with_a_byte_order_mark_is_read_without_it(tmp_path):
    """A circuit file from an editor that writes a byte-order mark failed on the worker with
    `non-ASCII byte: EF`."""
    from streams.client.kafka import load_job_file

    (tmp_path / "bell.qasm").write_bytes("\ufeff".encode() + BELL_QASM2.encode())
    (tmp_path / "job.yaml").write_bytes("\ufeffcircuit_file: bell.qasm\nshots: 10\n".encode())
    loaded = load_job_file(tmp_path / "job.yaml")
    assert loaded["circuit"] == BELL_QASM2 and loaded["shots"] == 10
    parse_circuit(loaded["circuit"])


def test_a_parser_that_cannot_be_imported_is_no_invalid_circuit(monkeypatch):
    """A half-initialised openqasm3 package (imported by two threads at once) failed a valid
    job for good as InvalidCircuit "No module named 'openqasm3._antlr.qasm3Lexer'" (a
    red-team run): an import error is the worker's, not the program's."""
    from workers.circuits import parsing

    def unimportable(source):
        raise ModuleNotFoundError("No module named 'openqasm3._antlr.qasm3Lexer'")

    monkeypatch.setattr(parsing, "_parse_qasm3", unimportable)
    with pytest.raises(ModuleNotFoundError):
        parsing._parse("OPENQASM 3.0;\nqubit q;\nh q;\n", "qasm3")
