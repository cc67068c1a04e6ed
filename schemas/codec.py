"""Avro single-object encoding of qlane's records (Avro 1.11 specification).

A frame is `C3 01`, the writer schema's 8-byte CRC-64-AVRO fingerprint of its Parsing
Canonical Form (little-endian), then the Avro binary datum. fastavro does all the work on
the hot path: parsing, fingerprints, writing, reading and resolving older writer schemas.
"""

from __future__ import annotations

import functools
import json
import pathlib
import re
from io import BytesIO
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from schemas import _walk
from schemas.decoded_size import check_decoded_size
from workers.errors import CorruptRecord, DecodedTooLarge, UndecodableRecord, UnknownSchema

MAGIC = b"\xc3\x01"
HEADER_SIZE = len(MAGIC) + 8

SCHEMA_DIR = pathlib.Path(__file__).resolve().parent
PUBLIC = ("JobRequest", "JobResult", "JobStatus", "CostEvent", "DriftEvent", "JobCancel")
INTERNAL = ("ExecuteTask", "MitigateTask")

_ENCODE_KINDS = frozenset({"int", "long", "boolean"})
# fastavro decodes every in-range long and boolean correctly; only 32-bit ints can overflow.
_DECODE_KINDS = frozenset({"int"})
_MAX_ERROR_CHARS = 300
# A datum above this size is walked before it is read, and refused if it would take more
# than MAX_DECODED_BYTES decoded (schemas/decoded_size.py). Below it, the worst case (a
# byte per empty record) stays under about 20 MB, and a job's record is read at once.
CHECK_DECODED_ABOVE_BYTES = 64 << 10
MAX_DECODED_BYTES = 32 << 20


def fingerprint(schema: Any) -> bytes:
    """The schema's CRC-64-AVRO fingerprint, as the 8 bytes written in a frame.

    fastavro returns the hex of the little-endian bytes (as Java and the spec do), so the
    hex decodes straight to frame order.
    """
    canonical = to_parsing_canonical_form(schema)
    return bytes.fromhex(_fastavro_fingerprint(canonical, "CRC-64-AVRO"))


def fingerprint_number(frame_bytes: bytes) -> int:
    """The 64-bit number a frame's fingerprint bytes hold (little-endian), as Java's
    `SchemaNormalization.parsingFingerprint64` gives it: the bytes' hex alone read reversed
    to a Java user (a red-team run)."""
    return int.from_bytes(frame_bytes, "little")


class Codec:
    """Frames and reads one record type; reads frames of every known version of it."""

    def __init__(self, name: str, current: dict, history: list[dict]) -> None:
        self.name = name
        self.schema = current
        self.fingerprint = fingerprint(current)
        self._header = MAGIC + self.fingerprint
        self._parsed = parse_schema(current)
        # fingerprint -> (writer schema, reader schema or None when it is the current one)
        self._writers: dict[bytes, tuple[dict, dict | None]] = {
            self.fingerprint: (self._parsed, None)
        }
        for old in history:
            old_fingerprint = fingerprint(old)
            if old_fingerprint not in self._writers:
                self._writers[old_fingerprint] = (parse_schema(old), self._parsed)
        names = _walk.Names(current)
        self._encode_guard = _walk.compile_guard(current, names, _ENCODE_KINDS)
        self._decode_guard = _walk.compile_guard(current, names, _DECODE_KINDS)

    def __repr__(self) -> str:
        return f"Codec({self.name!r}, fingerprint={self.fingerprint.hex()})"

    def encode(self, record: dict) -> bytes:
        """The framed record; CorruptRecord if it does not fit the current schema."""
        try:
            if self._encode_guard is not None:
                self._encode_guard(record)
            out = BytesIO()
            out.write(self._header)
            schemaless_writer(
                out,
                self._parsed,
                record,
                strict_allow_default=True,  # unknown fields are errors, missing defaults fine
                disable_tuple_notation=True,
            )
            return out.getvalue()
        except Exception as exc:
            raise CorruptRecord(self._describe("record does not fit the schema", exc)) from exc

    def decode(self, data: bytes) -> dict:
        """The record, resolved to the current schema.

        Raises UnknownSchema for a fingerprint of no known version and CorruptRecord for
        anything else that is not exactly one valid frame.
        """
        try:
            if data.__class__ is not bytes:
                if data is None:
                    raise CorruptRecord(f"{self.name}: the record has no value (a null value, "
                                        "as a Kafka tombstone has), not a frame")
                if not isinstance(data, (bytes, bytearray, memoryview)):
                    raise CorruptRecord(f"{self.name}: expected bytes, got {type(data).__name__}")
                data = bytes(data)
            if len(data) < HEADER_SIZE:
                raise CorruptRecord(f"{self.name}: {len(data)} bytes is shorter than a header")
            if data[:2] != MAGIC:
                raise CorruptRecord(f"{self.name}: bad magic {data[:2].hex()}, expected c301")
            writer = self._writers.get(data[2:HEADER_SIZE])
            if writer is None:
                frame = data[2:HEADER_SIZE]
                raise UnknownSchema(f"{self.name}: unknown fingerprint: frame bytes "
                                    f"{frame.hex()}, as a 64-bit number "
                                    f"{fingerprint_number(frame):#018x} (as Java's signed long "
                                    f"{int.from_bytes(frame, 'little', signed=True)})")
            if len(data) > CHECK_DECODED_ABOVE_BYTES:
                check_decoded_size(writer[0], data, HEADER_SIZE, MAX_DECODED_BYTES)
            stream = BytesIO(data)
            stream.seek(HEADER_SIZE)
            record = schemaless_reader(stream, writer[0], writer[1])
            if stream.tell() != len(data):
                raise CorruptRecord(
                    f"{self.name}: {len(data) - stream.tell()} trailing bytes after the datum"
                )
            if self._decode_guard is not None:
                self._decode_guard(record)
            return record
        except UndecodableRecord:
            raise
        except Exception as exc:
            raise CorruptRecord(self._describe("undecodable datum", exc)) from exc

    def decoded_bytes(self, data: bytes) -> int:
        """About the bytes `decode(data)` would take, found without decoding: more than
        MAX_DECODED_BYTES for a datum it would refuse as too large; 0 for what is not a frame
        of a known version (`decode` says why)."""
        if not isinstance(data, bytes) or len(data) < HEADER_SIZE or data[:2] != MAGIC:
            return 0
        writer = self._writers.get(data[2:HEADER_SIZE])
        if writer is None:
            return 0
        try:
            return check_decoded_size(writer[0], data, HEADER_SIZE, MAX_DECODED_BYTES)
        except DecodedTooLarge:
            return MAX_DECODED_BYTES + 1

    def _describe(self, what: str, exc: Exception) -> str:
        detail = f"{type(exc).__name__}: {exc}"
        if len(detail) > _MAX_ERROR_CHARS:
            detail = detail[:_MAX_ERROR_CHARS] + "..."
        return f"{self.name}: {what}: {detail}"


def schema_path(name: str) -> pathlib.Path:
    """The current `.avsc` of a record type."""
    if name in PUBLIC:
        return SCHEMA_DIR / f"{name}.avsc"
    if name in INTERNAL:
        return SCHEMA_DIR / "internal" / f"{name}.avsc"
    raise ValueError(f"unknown schema {name!r}; known: {', '.join(PUBLIC + INTERNAL)}")


def history_paths(name: str) -> list[pathlib.Path]:
    """The released versions of a public schema, oldest first (`<name>.v<N>.avsc`)."""
    schema_path(name)  # validates the name
    pattern = re.compile(rf"{re.escape(name)}\.v(\d+)\.avsc")
    found = []
    for path in (SCHEMA_DIR / "history").glob(f"{name}.v*.avsc"):
        match = pattern.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def load_schema(path: pathlib.Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def codec(name: str) -> Codec:
    """The shared Codec of a record type, e.g. codec("JobRequest")."""
    current = load_schema(schema_path(name))
    return Codec(name, current, [load_schema(p) for p in history_paths(name)])


@functools.cache
def _names(name: str) -> _walk.Names:
    return _walk.Names(codec(name).schema)


def fill_defaults(name: str, partial: dict) -> dict:
    """A complete record of the current schema from `partial`, defaults filled in.

    Nested records (also inside arrays, maps and optional unions) are filled too, and every
    default is a fresh copy. Raises CorruptRecord on unknown or missing required fields.
    """
    return _walk.fill_defaults(codec(name).schema, partial, _names(name))
