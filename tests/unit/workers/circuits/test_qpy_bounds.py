"""A prepared job's QPY section is checked against what a job can hold before it is loaded."""

from __future__ import annotations

import io
import resource
import struct

import pytest
from qiskit import QuantumCircuit, qpy
from qiskit.qpy import formats

from tests.unit.workers.conftest import BELL_QASM2
from workers.circuits.qpy_bounds import MAX_TEMPLATE_BITS, UnboundedSection, check_section
from workers.errors import CorruptRecord
from workers.execution.preparation import _HEADER, PreparedJob, prepare
from workers.jobs import JobSpec


def _section(circuits: list[QuantumCircuit]) -> bytearray:
    buffer = io.BytesIO()
    qpy.dump(circuits, buffer)
    return bytearray(buffer.getvalue())


def _circuit_offsets(section: bytes) -> list[int]:
    count = struct.unpack_from(formats.FILE_HEADER_V10_PACK, section)[5]
    start = formats.FILE_HEADER_V10_SIZE + 1
    return [struct.unpack_from("!Q", section, start + 8 * i)[0] for i in range(count)]


def _declare(section: bytearray, index: int, *, qubits: int | None = None,
             clbits: int | None = None) -> bytearray:
    offset = _circuit_offsets(section)[index]
    header = formats.CIRCUIT_HEADER_V12._make(
        struct.unpack_from(formats.CIRCUIT_HEADER_V12_PACK, section, offset))
    header = header._replace(num_qubits=header.num_qubits if qubits is None else qubits,
                             num_clbits=header.num_clbits if clbits is None else clbits)
    struct.pack_into(formats.CIRCUIT_HEADER_V12_PACK, section, offset, *header)
    return section


def _with_section(prepared_bytes: bytes, section: bytes) -> bytes:
    _, _, length = _HEADER.unpack_from(prepared_bytes)
    return prepared_bytes[: _HEADER.size + length] + bytes(section)


def test_a_section_this_qiskit_writes_passes_with_its_circuit_count() -> None:
    wide = QuantumCircuit(133, 1157)
    assert check_section(bytes(_section([QuantumCircuit(2), wide, QuantumCircuit(1)]))) == 3


@pytest.mark.parametrize("field", ["qubits", "clbits"])
@pytest.mark.parametrize("index", [0, 1])
def test_a_circuit_declaring_too_many_bits_is_refused(field: str, index: int) -> None:
    section = _declare(_section([QuantumCircuit(2), QuantumCircuit(2)]), index,
                       **{field: MAX_TEMPLATE_BITS + 1})
    with pytest.raises(UnboundedSection, match=f"circuit {index} declares 4097"):
        check_section(bytes(section))
    assert check_section(bytes(_declare(section, index, **{field: MAX_TEMPLATE_BITS}))) == 2


def test_more_circuits_than_allowed_are_refused() -> None:
    section = bytes(_section([QuantumCircuit(1)] * 3))
    assert check_section(section, max_templates=3) == 3
    with pytest.raises(UnboundedSection, match="declares 3 circuits > 2"):
        check_section(section, max_templates=2)


@pytest.mark.parametrize("damage", [
    lambda s: s[:10],                                   # no header
    lambda s: b"QASKIT" + s[6:],                        # not QPY
    lambda s: s[:6] + bytes([15]) + s[7:],              # before the circuit table
    lambda s: s[:6] + bytes([99]) + s[7:],              # newer than this Qiskit
    lambda s: s[:formats.FILE_HEADER_V10_SIZE] + b"s" + s[formats.FILE_HEADER_V10_SIZE + 1:],
    lambda s: s[: formats.FILE_HEADER_V10_SIZE + 5],    # table cut short
    lambda s: s[: formats.FILE_HEADER_V10_SIZE + 1] + struct.pack("!Q", 10**9) + s[
        formats.FILE_HEADER_V10_SIZE + 9:],             # a circuit past the end
])
def test_damaged_headers_are_refused(damage) -> None:
    with pytest.raises(UnboundedSection):
        check_section(bytes(damage(bytes(_section([QuantumCircuit(2)])))))


def test_a_forged_prepared_job_declaring_millions_of_qubits_is_corrupt_without_loading_it(
        registry, cache, limits) -> None:
    data = prepare(JobSpec("wf-forged", BELL_QASM2, shots=10), registry, cache, limits).to_bytes()
    _, _, length = _HEADER.unpack_from(data)
    section = bytearray(data[_HEADER.size + length:])
    forged = _with_section(data, _declare(section, 0, qubits=3_000_000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CorruptRecord, match="declares 3000000 qubits"):
        PreparedJob.from_bytes(forged)
    # Loading it would build three million qubits (about 600 MB).
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024


def test_a_prepared_job_with_more_templates_than_tasks_or_a_task_past_them_is_corrupt(
        registry, cache, limits) -> None:
    data = prepare(JobSpec("wf-forged", BELL_QASM2, shots=10), registry, cache, limits).to_bytes()
    assert len(PreparedJob.from_bytes(data).tasks) == 1
    with pytest.raises(CorruptRecord, match="2 circuits > 1"):
        PreparedJob.from_bytes(_with_section(data, _section([QuantumCircuit(2)] * 2)))
    _, _, length = _HEADER.unpack_from(data)
    header = data[_HEADER.size: _HEADER.size + length].replace(b'"tasks":[[0,', b'"tasks":[[5,')
    renamed = _HEADER.pack(b"QLPJ", 2, len(header)) + header + data[_HEADER.size + length:]
    with pytest.raises(CorruptRecord, match="outside the 1 held"):
        PreparedJob.from_bytes(renamed)


def decoy_table_section(qubits: int) -> bytes:
    """A section whose circuit table points at a harmless copy of the header appended at its
    end, while the circuit Qiskit's loader reads (it follows the bytes, not the table)
    declares `qubits` (red-team run)."""
    circuit = QuantumCircuit(2, 2)
    circuit.h(0)
    circuit.measure([0, 1], [0, 1])
    section = _section([circuit])
    (offset,) = _circuit_offsets(section)
    benign = bytes(section[offset: offset + formats.CIRCUIT_HEADER_V12_SIZE])
    _declare(section, 0, qubits=qubits)
    decoy = len(section)
    section += benign
    struct.pack_into("!Q", section, formats.FILE_HEADER_V10_SIZE + 1, decoy)
    return bytes(section)


def nested_definition_section(qubits: int) -> bytes:
    """A section whose top-level circuit is small and whose custom gate's definition (a
    nested circuit with its own header) declares `qubits` (red-team run)."""
    body = QuantumCircuit(2, name="NESTEDBODY")
    body.cx(0, 1)
    gate = body.to_gate()
    gate.name = "mygate"
    circuit = QuantumCircuit(2, 1)
    circuit.append(gate, [0, 1])
    circuit.measure(0, 0)
    section = _section([circuit])
    offset = section.find(b"NESTEDBODY") - formats.CIRCUIT_HEADER_V12_SIZE
    header = formats.CIRCUIT_HEADER_V12._make(
        struct.unpack_from(formats.CIRCUIT_HEADER_V12_PACK, section, offset))
    struct.pack_into(formats.CIRCUIT_HEADER_V12_PACK, section, offset,
                     *header._replace(num_qubits=qubits))
    return bytes(section)


@pytest.mark.parametrize("forge", [decoy_table_section, nested_definition_section])
def test_what_the_header_check_cannot_see_is_measured_in_a_sandbox(
        forge, registry, cache, limits):
    """Both pass the header check, and loading them in the worker kept about 1.1 GB for 4
    million qubits; the sandbox loads them first and refuses what they would take."""
    from workers.circuits.sandbox import LoadCheck, SandboxBounds, SandboxPool

    data = prepare(JobSpec("wf-forged", BELL_QASM2, shots=10), registry, cache, limits).to_bytes()
    assert check_section(forge(500_000)) == 1
    forged = _with_section(data, forge(500_000))
    pool = SandboxPool(SandboxBounds(wall_s=60, cpu_s=20, memory_mb=1024), size=1)
    try:
        header, _ = pool.exchange(LoadCheck(forged, max_mb=48))
        assert header["ok"] is False and header["error"] == "ResourceLimitExceeded", header
        assert "MB loaded > 48 MB" in header["message"]
        fine, _ = pool.exchange(LoadCheck(data, max_mb=48))
        assert fine["ok"] is True and fine["grown_bytes"] < 48 * 2**20, fine
    finally:
        pool.close()
