"""The codec frames, round-trips and rejects exactly as the wire format says."""

from __future__ import annotations

import io
import math
import struct

import avro.io
import avro.schema
import fastavro
import pytest
from fastavro.schema import fingerprint as fastavro_fingerprint
from fastavro.schema import to_parsing_canonical_form
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import INTERNAL, PUBLIC, codec, fill_defaults, load_schema, schema_path
from workers.errors import CorruptRecord, UndecodableRecord, UnknownSchema

from .schema_samples import QASM3, samples, typical_job_request

NAMES = PUBLIC + INTERNAL
SAMPLES = samples()
CASES = [(name, i) for name in NAMES for i in range(len(SAMPLES[name]))]


def sample(name: str, i: int = 0) -> dict:
    return samples()[name][i]


def plain_frame(name: str, record: dict) -> bytes:
    """A frame built with nothing but fastavro and struct, as any client could."""
    schema = load_schema(schema_path(name))
    hex_le = fastavro_fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO")
    value = int.from_bytes(bytes.fromhex(hex_le), "little")
    out = io.BytesIO()
    out.write(struct.pack("<BBQ", 0xC3, 0x01, value))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


# --- round trips and framing -----------------------------------------------------------
@pytest.mark.parametrize(("name", "i"), CASES)
def test_round_trip(name, i):
    record = sample(name, i)
    assert codec(name).decode(codec(name).encode(record)) == record


@pytest.mark.parametrize("name", NAMES)
def test_frame_starts_with_magic_and_fingerprint(name):
    frame = codec(name).encode(sample(name))
    assert frame[:2] == b"\xc3\x01"
    assert frame[2:10] == codec(name).fingerprint
    assert len(codec(name).fingerprint) == 8


@pytest.mark.parametrize(("name", "i"), CASES)
def test_plain_fastavro_struct_frame_decodes(name, i):
    record = sample(name, i)
    frame = plain_frame(name, record)
    assert frame == codec(name).encode(record)
    assert codec(name).decode(frame) == record


@pytest.mark.parametrize(("name", "i"), CASES)
def test_avro_package_frame_decodes(name, i):
    record = sample(name, i)
    schema = avro.schema.parse(schema_path(name).read_text())
    body = io.BytesIO()
    avro.io.DatumWriter(schema).write(record, avro.io.BinaryEncoder(body))
    frame = b"\xc3\x01" + schema.fingerprint("CRC-64-AVRO") + body.getvalue()
    assert codec(name).decode(frame) == record


@pytest.mark.parametrize(("name", "i"), CASES)
def test_avro_package_reads_our_frames(name, i):
    record = sample(name, i)
    frame = codec(name).encode(record)
    schema = avro.schema.parse(schema_path(name).read_text())
    assert frame[2:10] == schema.fingerprint("CRC-64-AVRO")
    decoded = avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(frame[10:])))
    assert decoded == record


def test_decode_accepts_bytearray_and_memoryview():
    frame = codec("JobStatus").encode(sample("JobStatus"))
    assert codec("JobStatus").decode(bytearray(frame)) == sample("JobStatus")
    assert codec("JobStatus").decode(memoryview(frame)) == sample("JobStatus")


def test_codec_is_cached_and_names_are_checked():
    assert codec("JobRequest") is codec("JobRequest")
    with pytest.raises(ValueError, match="unknown schema"):
        codec("NoSuchRecord")


def test_special_values_round_trip():
    record = {**sample("CostEvent"), "estimate_usd": math.inf, "shots": 2**63 - 1}
    record["actual_usd"] = -0.0
    assert codec("CostEvent").decode(codec("CostEvent").encode(record)) == record
    nan = codec("CostEvent").decode(codec("CostEvent").encode({**record, "actual_usd": math.nan}))
    assert math.isnan(nan["actual_usd"])


# --- decoding errors -------------------------------------------------------------------
def test_wrong_magic_is_corrupt():
    frame = codec("JobStatus").encode(sample("JobStatus"))
    for magic in (b"\xc3\x00", b"\x00\x01", b"\x00\x00", b'{"'):
        with pytest.raises(CorruptRecord, match="magic"):
            codec("JobStatus").decode(magic + frame[2:])


def test_every_truncation_is_corrupt():
    frame = codec("JobRequest").encode(typical_job_request())
    for end in range(len(frame)):
        with pytest.raises(CorruptRecord):
            codec("JobRequest").decode(frame[:end])


def test_unknown_fingerprint():
    frame = codec("JobStatus").encode(sample("JobStatus"))
    with pytest.raises(UnknownSchema, match="fingerprint"):
        codec("JobStatus").decode(frame[:2] + bytes(8) + frame[10:])
    # Each codec reads its own record type only.
    with pytest.raises(UnknownSchema):
        codec("JobResult").decode(frame)


def test_byte_swapped_fingerprint_is_unknown():
    # The classic mistake: writing the fingerprint big-endian.
    frame = codec("JobStatus").encode(sample("JobStatus"))
    with pytest.raises(UnknownSchema):
        codec("JobStatus").decode(frame[:2] + frame[2:10][::-1] + frame[10:])


@pytest.mark.parametrize("extra", [b"\x00", b"\x02x", b"garbage" * 10])
def test_trailing_bytes_are_corrupt(extra):
    frame = codec("JobStatus").encode(sample("JobStatus"))
    with pytest.raises(CorruptRecord, match="trailing"):
        codec("JobStatus").decode(frame + extra)


def test_garbage_datums_are_corrupt():
    c = codec("JobStatus")
    header = b"\xc3\x01" + c.fingerprint
    bad = [
        header + b"\x04\xff\xfe" + b"\x00" * 8,  # invalid UTF-8 in workflow_id
        header + b"\x01",  # negative string length
        header + b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01",  # huge string length
        header + b"\xff" * 12,  # endless varint
    ]
    for frame in bad:
        with pytest.raises(CorruptRecord):
            c.decode(frame)


def test_bad_union_branch_is_corrupt():
    record = {**sample("CostEvent"), "budget_remaining_usd": None}
    frame = codec("CostEvent").encode(record)
    # The union index (0 = null) is the byte before at_ms, the last field; 4 means branch 2.
    tail = fastavro_long(record["at_ms"])
    assert frame.endswith(b"\x00" + tail)
    with pytest.raises(CorruptRecord):
        codec("CostEvent").decode(frame[: -len(tail) - 1] + b"\x04" + tail)


def fastavro_long(value: int) -> bytes:
    out = io.BytesIO()
    fastavro.schemaless_writer(out, "long", value)
    return out.getvalue()


def test_int_out_of_32_bit_range_is_corrupt():
    # A long-encoded 2**40 where an int belongs: fastavro would read it, the spec forbids it.
    record = sample("JobStatus")
    frame = codec("JobStatus").encode(record)
    null_progress = b"\x00"  # union branch 0 (null) of the last field
    body = fastavro_long(record["attempt"]) + fastavro_long(record["at_ms"]) + null_progress
    assert frame.endswith(body)
    forged = (frame[: -len(body)] + fastavro_long(2**40) + fastavro_long(record["at_ms"])
              + null_progress)
    with pytest.raises(CorruptRecord, match="out of range"):
        codec("JobStatus").decode(forged)


@pytest.mark.parametrize("data", ["a string", 42, [1, 2]])
def test_non_bytes_are_corrupt(data):
    with pytest.raises(CorruptRecord, match="expected bytes"):
        codec("JobStatus").decode(data)


# --- encoding errors -------------------------------------------------------------------
def _with(**changes) -> dict:
    return {**typical_job_request(), **changes}


@pytest.mark.parametrize(
    "record",
    [
        _with(shots=1.5),  # fastavro alone would truncate it to 1
        _with(shots=True),
        _with(shots="1024"),
        _with(shots=2**31),
        _with(priority=-(2**31) - 1),
        _with(submitted_at_ms=2**63),
        _with(submitted_at_ms=1.7e12),
        _with(seed=0.5),
        _with(circuit=None),
        _with(circuit=b"bytes"),
        _with(circuit="\ud800"),  # lone surrogate: not encodable as UTF-8
        _with(parent_workflow_id=("string", "tuple notation")),
        _with(parent_workflow_id=7),
        _with(parameter_sets=[["0.1"]]),
        _with(observables=[{"terms": [{"pauli": "ZZ", "coeff": "one"}]}]),
        _with(metadata={"k": 1}),
        _with(metadata={1: "v"}),
        _with(mitigation={"zne": None, "readout": "no", "dynamical_decoupling": False}),
        _with(bogus="unknown field"),
        _with(mitigation={"zne": None, "readout": False, "dynamical_decoupling": False, "x": 1}),
        {k: v for k, v in typical_job_request().items() if k != "circuit"},
        None,
        "not a record",
        [],
    ],
    ids=lambda r: "case",
)
def test_records_that_do_not_fit_raise_corrupt(record):
    with pytest.raises(CorruptRecord):
        codec("JobRequest").encode(record)


def test_numeric_string_in_a_double_field_is_converted_losslessly():
    # The one leniency left (see schemas/_walk.py): fastavro applies float() to it.
    record = _with(observables=[{"terms": [{"pauli": "ZZ", "coeff": "0.5"}]}])
    decoded = codec("JobRequest").decode(codec("JobRequest").encode(record))
    assert decoded["observables"][0]["terms"][0]["coeff"] == 0.5


def test_missing_defaulted_fields_are_filled_on_encode():
    minimal = {"workflow_id": "w", "circuit": QASM3}
    assert codec("JobRequest").decode(codec("JobRequest").encode(minimal)) == fill_defaults(
        "JobRequest", minimal
    )


def test_numpy_scalars_encode():
    np = pytest.importorskip("numpy")
    record = sample("JobResult")
    record["shots_used"] = np.int64(73728)
    record["circuits"][0]["shots"] = np.int32(4096)
    record["circuits"][0]["counts"] = {"00": np.int64(5), "11": np.int64(7)}
    record["expectations"][0]["value"] = np.float64(0.5)
    record["provenance"]["transpile_cache_hit"] = np.bool_(True)
    decoded = codec("JobResult").decode(codec("JobResult").encode(record))
    assert decoded["circuits"][0]["counts"] == {"00": 5, "11": 7}
    assert decoded["provenance"]["transpile_cache_hit"] is True


# --- fill_defaults ---------------------------------------------------------------------
def test_fill_defaults_round_trip():
    record = fill_defaults("JobRequest", {"workflow_id": "w", "circuit": QASM3})
    frame = codec("JobRequest").encode(record)
    assert codec("JobRequest").decode(frame) == record
    assert record["shots"] == 1024
    assert record["backend"] == "aer.ideal"
    assert record["mitigation"] == {"zne": None, "readout": False, "dynamical_decoupling": False}
    assert record["metadata"] == {} and record["fallback"] == []


def test_fill_defaults_fills_nested_records():
    record = fill_defaults(
        "JobRequest",
        {
            "workflow_id": "w",
            "circuit": QASM3,
            "observables": [{"terms": [{"pauli": "ZZ"}, {"pauli": "XI", "coeff": 0.5}]}],
            "mitigation": {"zne": {"extrapolation": "linear"}, "readout": True},
        },
    )
    assert record["observables"][0]["terms"] == [
        {"pauli": "ZZ", "coeff": 1.0},
        {"pauli": "XI", "coeff": 0.5},
    ]
    assert record["mitigation"] == {
        "zne": {"scale_factors": [1.0, 3.0, 5.0], "folding": "global", "extrapolation": "linear"},
        "readout": True,
        "dynamical_decoupling": False,
    }
    codec("JobRequest").encode(record)


def test_fill_defaults_gives_fresh_defaults():
    first = fill_defaults("JobRequest", {"workflow_id": "a", "circuit": QASM3})
    first["fallback"].append("classical")
    first["metadata"]["k"] = "v"
    second = fill_defaults("JobRequest", {"workflow_id": "b", "circuit": QASM3})
    assert second["fallback"] == [] and second["metadata"] == {}


@pytest.mark.parametrize(("name", "i"), CASES)
def test_fill_defaults_keeps_complete_records(name, i):
    assert fill_defaults(name, sample(name, i)) == sample(name, i)


@pytest.mark.parametrize(
    "partial",
    [
        {"workflow_id": "w", "circuit": "c", "shot": 5},
        {"workflow_id": "w", "circuit": "c", "mitigation": {"zne": {"scale": [1.0]}}},
        {"workflow_id": "w", "circuit": "c", "observables": [{"terms": [{"pauli": "Z", "x": 1}]}]},
    ],
)
def test_fill_defaults_rejects_unknown_fields(partial):
    with pytest.raises(CorruptRecord, match="unknown field"):
        fill_defaults("JobRequest", partial)


def test_fill_defaults_rejects_missing_required_fields():
    with pytest.raises(CorruptRecord, match="circuit: required"):
        fill_defaults("JobRequest", {"workflow_id": "w"})
    with pytest.raises(CorruptRecord, match="pauli: required"):
        fill_defaults(
            "JobRequest",
            {"workflow_id": "w", "circuit": "c", "observables": [{"terms": [{"coeff": 2.0}]}]},
        )


# --- fuzzing ---------------------------------------------------------------------------
VALID_FRAMES = [(name, codec(name).encode(r)) for name in NAMES for r in SAMPLES[name]]


def _decodes_validly_or_raises_typed(name: str, data: bytes) -> None:
    c = codec(name)
    try:
        record = c.decode(data)
    except UndecodableRecord:
        return
    # Whatever decodes is a valid record: it encodes again, to a frame that decodes the same.
    frame = c.encode(record)
    assert c.encode(c.decode(frame)) == frame


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(NAMES), data=st.binary(max_size=200), framed=st.booleans())
def test_random_bytes_never_escape_as_raw_errors(name, data, framed):
    if framed:
        data = b"\xc3\x01" + codec(name).fingerprint + data
    _decodes_validly_or_raises_typed(name, data)


_mutation = st.tuples(
    st.sampled_from(["flip", "set", "insert", "delete", "truncate"]),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=0, max_value=255),
)


def _mutate(frame: bytes, mutations) -> bytes:
    data = bytearray(frame)
    for op, position, byte in mutations:
        at = position % (len(data) + 1)
        if op == "insert":
            data.insert(at, byte)
        elif op == "truncate":
            del data[at:]
        elif at < len(data):
            if op == "flip":
                data[at] ^= 1 << (byte % 8)
            elif op == "set":
                data[at] = byte
            else:
                del data[at]
    return bytes(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frame=st.sampled_from(VALID_FRAMES),
    mutations=st.lists(_mutation, min_size=1, max_size=4),
    body_only=st.booleans(),
)
def test_mutated_frames_never_escape_as_raw_errors(frame, mutations, body_only):
    name, data = frame
    if body_only:  # keep the header so the mutation reaches the datum
        data = data[:10] + _mutate(data[10:], mutations)
    else:
        data = _mutate(data, mutations)
    _decodes_validly_or_raises_typed(name, data)


def test_a_record_with_no_value_is_named_for_what_it_is():
    """A Kafka tombstone on a job topic was dead-lettered as "expected bytes, got NoneType"
    (a Go client's red-team run)."""
    with pytest.raises(CorruptRecord, match="no value .*tombstone"):
        codec("JobRequest").decode(None)
