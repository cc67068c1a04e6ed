"""fastavro's CRC-64-AVRO fingerprints checked against the spec's reference algorithm."""

from __future__ import annotations

import json

import avro.schema
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form

from schemas.codec import (
    HEADER_SIZE,
    INTERNAL,
    MAGIC,
    PUBLIC,
    SCHEMA_DIR,
    codec,
    fingerprint,
    fingerprint_number,
    schema_path,
)
from workers.errors import UnknownSchema

EMPTY = 0xC15D213AA4D7A795


def _table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY & -(fp & 1))
        table.append(fp)
    return table


FP_TABLE = _table()


def rabin64(data: bytes) -> int:
    """The Avro specification's reference `fingerprint64`."""
    fp = EMPTY
    for byte in data:
        fp = (fp >> 8) ^ FP_TABLE[(fp ^ byte) & 0xFF]
    return fp


def spec_frame_bytes(canonical: str) -> bytes:
    """The fingerprint as the spec frames it: the 64-bit value, little-endian."""
    return rabin64(canonical.encode("utf-8")).to_bytes(8, "little")


# From the Avro project's share/test/data/schema-tests.txt (signed 64-bit values).
SPEC_VECTORS = {
    '"null"': 7195948357588979594,
    '"boolean"': -6970731678124411036,
    '"int"': 8247732601305521295,
    '"long"': -3434872931120570953,
    '"float"': 5583340709985441680,
    '"double"': -8181574048448539266,
    '"bytes"': 5746618253357095269,
    '"string"': -8142146995180207161,
    "[]": -1241056759729112623,
    '["int"]': -5232228896498058493,
    '["int","boolean"]': 5392556393470105090,
    '{"name":"foo","type":"record","fields":[]}': -4824392279771201922,
}

ALL_AVSC = sorted(SCHEMA_DIR.glob("**/*.avsc"))


@pytest.mark.parametrize("canonical", sorted(SPEC_VECTORS))
def test_reference_implementation_matches_spec_vectors(canonical):
    expected = SPEC_VECTORS[canonical] & (2**64 - 1)
    assert rabin64(canonical.encode()) == expected


@pytest.mark.parametrize("canonical", sorted(SPEC_VECTORS))
def test_fastavro_matches_spec_vectors(canonical):
    schema = json.loads(canonical)
    assert to_parsing_canonical_form(schema) == canonical
    assert fingerprint(schema) == (SPEC_VECTORS[canonical] & (2**64 - 1)).to_bytes(8, "little")


def test_fastavro_returns_little_endian_hex():
    # "int" fingerprints to 0x7275d51a3f395c8f; fastavro gives the hex of its LE bytes.
    raw = fastavro_fingerprint(to_parsing_canonical_form("int"), "CRC-64-AVRO")
    assert raw == "8f5c393f1ad57572"
    assert fingerprint("int") == bytes.fromhex("8f5c393f1ad57572")


@pytest.mark.parametrize(
    "primitive", ["null", "boolean", "int", "long", "float", "double", "bytes", "string"]
)
def test_primitive_fingerprints(primitive):
    canonical = to_parsing_canonical_form(primitive)
    assert canonical == f'"{primitive}"'
    assert fingerprint(primitive) == spec_frame_bytes(canonical)


@pytest.mark.parametrize("path", ALL_AVSC, ids=lambda p: str(p.relative_to(SCHEMA_DIR)))
def test_every_avsc_fingerprint_matches_reference(path):
    schema = json.loads(path.read_text())
    canonical = to_parsing_canonical_form(schema)
    assert fingerprint(schema) == spec_frame_bytes(canonical)


@pytest.mark.parametrize("path", ALL_AVSC, ids=lambda p: str(p.relative_to(SCHEMA_DIR)))
def test_avro_package_agrees_on_canonical_form_and_fingerprint(path):
    # Holds because the schemas use no logical types, where the two libraries differ.
    text = path.read_text()
    theirs = avro.schema.parse(text)
    assert to_parsing_canonical_form(json.loads(text)) == theirs.canonical_form
    assert fingerprint(json.loads(text)) == theirs.fingerprint("CRC-64-AVRO")


@pytest.mark.parametrize("name", PUBLIC + INTERNAL)
def test_codec_fingerprint_is_that_of_the_current_schema(name):
    schema = json.loads(schema_path(name).read_text())
    assert codec(name).fingerprint == spec_frame_bytes(to_parsing_canonical_form(schema))


def test_fingerprints_are_distinct():
    fingerprints = {codec(name).fingerprint for name in PUBLIC + INTERNAL}
    assert len(fingerprints) == len(PUBLIC + INTERNAL)


def test_an_unknown_fingerprint_is_named_as_java_prints_it():
    """Java's parsingFingerprint64 printed 3b7e8122a011f3e for the frame bytes
    3e1f012a12e8b703, which the message gave alone (a red-team run's Java client)."""
    frame = bytes.fromhex("3e1f012a12e8b703")
    assert f"{fingerprint_number(frame):x}" == "3b7e8122a011f3e"
    with pytest.raises(UnknownSchema, match="3e1f012a12e8b703.*0x03b7e8122a011f3e"):
        codec("JobRequest").decode(MAGIC + frame + b"\x00" * (HEADER_SIZE + 4))


def test_an_unknown_fingerprint_past_2_to_the_63_is_also_named_as_javas_signed_long():
    """Java's parsingFingerprint64 returns a signed long (-8144905599436050666 for
    0x8ef77b82c8862f16), which the message gave only as unsigned hex (a red-team Java
    client matched them by hand)."""
    frame = (0x9000000000000001).to_bytes(8, "little")
    with pytest.raises(UnknownSchema, match="0x9000000000000001 .*-8070450532247928831"):
        codec("JobRequest").decode(MAGIC + frame + b"\x00" * 4)
