"""A program's gate named like one of the backend's own instructions runs as its definition."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from qiskit import QuantumCircuit

from workers.circuits.impostors import is_impostor, without_impostors
from workers.errors import InvalidCircuit
from workers.execution.preparation import execute, prepare
from workers.jobs import JobSpec


def program(name: str, body: str = "h a; cx a, b;") -> str:
    return (f'OPENQASM 3.0;\ninclude "stdgates.inc";\ngate {name} a, b {{ {body} }}\n'
            f"qubit[2] q;\nbit[2] c;\n{name} q[0], q[1];\nc = measure q;\n")


def test_a_gate_named_like_an_aer_instruction_that_crashed_the_process_runs_as_defined():
    """`diagonal`, `multiplexer` and `roerror` reached Aer as its own instructions and
    crashed the worker (SIGSEGV); run in a child so that a regression fails, not kills."""
    script = textwrap.dedent(f"""
        from workers.backends.registry import BackendRegistry
        from workers.circuits.transpile import TranspileCache
        from workers.execution.preparation import execute, prepare
        from workers.jobs import JobSpec
        from workers.limits import Limits
        registry = BackendRegistry()
        for name in ("diagonal", "multiplexer", "roerror"):
            source = {program("NAME")!r}.replace("NAME", name)
            prepared = prepare(JobSpec("wf-" + name, source, shots=400), registry,
                               TranspileCache(), Limits())
            (counts,) = execute(prepared, registry, 7)
            assert set(counts) == {{"00", "11"}}, (name, counts)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode,
                                                                   done.stderr[-2000:])


@pytest.mark.parametrize("name", ["unitary", "initialize", "rzz", "pauli", "mcx"])
def test_other_borrowed_names_run_as_defined(registry, cache, limits, name):
    """These failed the job (ExecutionFailed: IndexError, or wrong parameter counts)."""
    prepared = prepare(JobSpec(f"wf-{name}", program(name), shots=400), registry, cache, limits)
    (counts,) = execute(prepared, registry, 7)
    assert set(counts) == {"00", "11"}


def test_a_borrowed_name_inside_a_branch_is_unrolled_too(registry, cache, limits):
    def source(name: str) -> str:
        return (f'OPENQASM 3.0;\ninclude "stdgates.inc";\ngate {name} a, b {{ x a; x b; }}\n'
                "qubit[2] q;\nbit[2] c;\nbit f;\nx q[0];\nf = measure q[0];\n"
                f"if (f) {{ {name} q[0], q[1]; }}\nc = measure q;\n")

    prepared = prepare(JobSpec("wf-branch", source("diagonal"), shots=100), registry, cache,
                       limits)
    target = registry.get("aer.ideal").target
    (branch,) = [i.operation for i in prepared.templates[0].data if i.operation.name == "if_else"]
    assert [i.operation.name for i in branch.blocks[0].data] == ["x", "x"]
    assert not any(is_impostor(i.operation, target) for i in branch.blocks[0].data)
    plain = prepare(JobSpec("wf-plain", source("mine"), shots=100), registry, cache, limits)
    assert execute(prepared, registry, 7) == execute(plain, registry, 7)


def test_an_opaque_gate_with_a_borrowed_name_is_refused(registry, cache, limits):
    source = ('OPENQASM 2.0;\ninclude "qelib1.inc";\nopaque diagonal a, b;\nqreg q[2];\n'
              "creg c[2];\ndiagonal q[0], q[1];\nmeasure q -> c;\n")
    with pytest.raises(InvalidCircuit, match="has the name of a backend instruction"):
        prepare(JobSpec("wf-opaque", source, shots=10), registry, cache, limits)


def test_a_circuit_of_the_targets_own_gates_is_returned_as_it_is(registry):
    circuit = QuantumCircuit(2)
    circuit.h(0)
    circuit.cx(0, 1)
    circuit.rzz(0.3, 0, 1)
    circuit.measure_all()
    assert without_impostors(circuit, registry.get("aer.ideal").target) is circuit


def test_a_borrowed_name_inside_another_gates_definition_is_unrolled(registry, cache, limits):
    """`gate wrap a, b { diagonal a, b; }`: the transpiler unrolled `wrap`, met `diagonal`,
    kept it as Aer's, and Aer crashed the worker (red-team run). Checked in a child."""
    script = textwrap.dedent('''
        from workers.backends.registry import BackendRegistry
        from workers.circuits.transpile import TranspileCache
        from workers.execution.preparation import execute, prepare
        from workers.jobs import JobSpec
        from workers.limits import Limits
        registry = BackendRegistry()
        for name, header in (("diagonal", 'OPENQASM 2.0;\\ninclude "qelib1.inc";\\n'),
                             ("multiplexer", 'OPENQASM 3.0;\\ninclude "stdgates.inc";\\n')):
            source = (header + f"gate {name} a, b {{ cx a, b; }}\\n"
                      f"gate inner a, b {{ {name} a, b; }}\\n"
                      "gate wrap a, b { h a; inner a, b; }\\n"
                      + ("qreg q[2];\\ncreg c[2];\\nwrap q[0], q[1];\\nmeasure q -> c;\\n"
                         if "2.0" in header else
                         "qubit[2] q;\\nbit[2] c;\\nwrap q[0], q[1];\\nc = measure q;\\n"))
            prepared = prepare(JobSpec("wf-" + name, source, shots=400), registry,
                               TranspileCache(), Limits())
            ops = set(prepared.templates[0].count_ops())
            assert name not in ops, (name, ops)
            (counts,) = execute(prepared, registry, 7)
            assert set(counts) == {"00", "11"}, (name, counts)
        print("ok")
    ''')
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode,
                                                                   done.stderr[-2000:])


@pytest.mark.parametrize("backend", ["aer.ideal", "aer.noisy"])
def test_a_gate_named_like_a_standard_gate_the_backend_lacks_runs_as_defined(
        registry, cache, limits, backend):
    """The transpiler translates gates by name: `gate h a { x a; }` ran as a Hadamard on
    aer.noisy (no `h` among its instructions) and `gate iswap a, b { x a; }` as an iSWAP on
    aer.ideal (red-team run)."""
    h_is_x = ('OPENQASM 3.0;\ngate h a { U(pi, 0, pi) a; }\nbit[1] c;\nqubit[1] q;\nh q[0];\n'
              "c[0] = measure q[0];\n")
    iswap_is_x = ('OPENQASM 3.0;\ninclude "stdgates.inc";\ngate iswap a, b { x a; }\n'
                  "bit[2] c;\nqubit[2] q;\niswap q[0], q[1];\nc = measure q;\n")
    for source, expected in ((h_is_x, "1"), (iswap_is_x, "01")):
        prepared = prepare(JobSpec("wf-std", source, shots=2000, backend=backend), registry,
                           cache, limits)
        (counts,) = execute(prepared, registry, 5)
        assert counts.get(expected, 0) > 1800, (backend, counts)


def test_the_parsers_own_standard_gates_are_left_alone(registry):
    from workers.circuits.parsing import parse_circuit

    source = ('OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[3];\ncreg c[3];\n'
              "h q[0]; s q[0]; sdg q[0]; t q[1]; u3(0.1,0.2,0.3) q[0]; cx q[0],q[1]; "
              "cz q[0],q[1]; swap q[0],q[1]; ccx q[0],q[1],q[2]; rzz(0.1) q[0],q[1]; "
              "cu1(0.1) q[0],q[1];\nmeasure q -> c;\n")
    circuit = parse_circuit(source, "qasm2")
    for backend in ("aer.ideal", "aer.noisy"):
        assert without_impostors(circuit, registry.get(backend).target) is circuit


@pytest.mark.parametrize("backend", ["aer.ideal", "aer.noisy"])
def test_a_qasm2_program_defining_a_qelib1_or_legacy_gate_runs_its_definition(
        registry, cache, limits, backend):
    """Qiskit's legacy QASM 2 gate list put its own class in place of the program's gate:
    `gate cx a, b { x a; x b; }` ran as a CNOT (counts 00 instead of 11), and `gate sx a
    { x a; }` after the include as an SX (half 1s instead of all)."""
    cx_is_two_x = ("OPENQASM 2.0;\ngate x a { U(pi, 0, pi) a; }\ngate cx a, b { x a; x b; }\n"
                   "qreg q[2];\ncreg c[2];\ncx q[0], q[1];\nmeasure q -> c;\n")
    sx_is_x = ('OPENQASM 2.0;\ninclude "qelib1.inc";\ngate sx a { x a; }\nqreg q[1];\n'
               "creg c[1];\nsx q[0];\nmeasure q -> c;\n")
    for source, expected in ((cx_is_two_x, "11"), (sx_is_x, "1")):
        prepared = prepare(JobSpec("wf-qasm2", source, shots=2000, backend=backend), registry,
                           cache, limits)
        (counts,) = execute(prepared, registry, 5)
        assert counts.get(expected, 0) > 1800, (backend, counts)


def test_a_qasm2_program_redefining_a_gate_its_include_defines_is_invalid():
    from workers.circuits.parsing import parse_circuit

    source = ('OPENQASM 2.0;\ninclude "qelib1.inc";\ngate cx a, b { x a; }\nqreg q[2];\n'
              "cx q[0], q[1];\n")
    with pytest.raises(InvalidCircuit, match="already defined"):
        parse_circuit(source, "qasm2")
    commented = ('OPENQASM 2.0;\ninclude "qelib1.inc";\n// gate sx is standard\nqreg q[1];\n'
                 "sx q[0];\n")
    assert type(parse_circuit(commented, "qasm2").data[0].operation).__name__.endswith("SXGate")
