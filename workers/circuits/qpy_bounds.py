"""What a QPY section declares, read before Qiskit loads it.

Prepared jobs travel between stages as QPY (workers.execution.preparation). A stage topic is
written by workers, but it is still a topic: on a broker without ACLs anyone can write it,
and QPY lets a few bytes declare a huge circuit. A circuit header that declares 3,000,000
qubits is 33 bytes; Qiskit's loader builds every one of those bits, about 2.6 s and 600 MB
in the process that loads it. So before a section is loaded, the header of every circuit in
it is read through the circuit table (QPY 16 and later, which is what this Qiskit writes)
and the section is refused when a circuit declares more bits, or the section more circuits,
than a prepared job can hold. Everything else in a section costs at most a small multiple
of its own bytes to load (registers and instructions are spelled out; parameter vectors are
not expanded), so the record size limits bound it.

The layouts come from `qiskit.qpy.formats`; only the fields named above are read.
"""

from __future__ import annotations

import struct

from qiskit.qpy import common, formats, type_keys

# More than any backend's qubits (the largest device has 133) plus the declared classical
# bits a job may have (Limits.max_clbits, 1024) and the bits that measure its qubits.
MAX_TEMPLATE_BITS = 4096
# A prepared job's templates (one per measurement basis and scale factor) are far fewer
# than its tasks; a QPY circuit costs about 3 KB of memory loaded.
MAX_TEMPLATES = 16_384
# The first version whose file header lists every circuit's byte offset.
_FIRST_TABLED_VERSION = 16


class UnboundedSection(ValueError):
    """A QPY section that is not one this worker wrote or declares more than a job holds."""


def check_section(section: bytes, *, max_templates: int = MAX_TEMPLATES,
                  max_bits: int = MAX_TEMPLATE_BITS) -> int:
    """Raise UnboundedSection unless every circuit header of `section` stays inside the
    bounds; return the number of circuits."""
    if len(section) < formats.FILE_HEADER_V10_SIZE + 1:
        raise UnboundedSection(f"QPY section of {len(section)} bytes has no header")
    header = formats.FILE_HEADER_V10._make(
        struct.unpack_from(formats.FILE_HEADER_V10_PACK, section))
    if header.preface != b"QISKIT":
        raise UnboundedSection("not a QPY section")
    if not _FIRST_TABLED_VERSION <= header.qpy_version <= common.QPY_VERSION:
        raise UnboundedSection(
            f"QPY version {header.qpy_version} is not one this worker reads for prepared "
            f"jobs ({_FIRST_TABLED_VERSION}..{common.QPY_VERSION})")
    position = formats.FILE_HEADER_V10_SIZE
    if section[position:position + 1] != type_keys.Program.CIRCUIT:
        raise UnboundedSection("QPY section holds no circuits")
    position += 1
    count = header.num_programs
    if count > max_templates:
        raise UnboundedSection(f"QPY section declares {count} circuits > {max_templates}")
    table_end = position + count * formats.CIRCUIT_TABLE_ENTRY_SIZE
    if table_end > len(section):
        raise UnboundedSection(f"QPY section's circuit table ({count}) runs past its end")
    for index in range(count):
        (offset,) = struct.unpack_from(
            formats.CIRCUIT_TABLE_ENTRY_PACK,
            section, position + index * formats.CIRCUIT_TABLE_ENTRY_SIZE)
        if not table_end <= offset <= len(section) - formats.CIRCUIT_HEADER_V12_SIZE:
            raise UnboundedSection(f"QPY circuit {index} starts outside the section")
        circuit = formats.CIRCUIT_HEADER_V12._make(
            struct.unpack_from(formats.CIRCUIT_HEADER_V12_PACK, section, offset))
        for kind, declared in (("qubits", circuit.num_qubits),
                               ("classical bits", circuit.num_clbits)):
            if declared > max_bits:
                raise UnboundedSection(
                    f"QPY circuit {index} declares {declared} {kind} > {max_bits}")
    return count
