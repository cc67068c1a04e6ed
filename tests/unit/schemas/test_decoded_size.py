"""A datum that would take too much memory decoded is refused before fastavro reads it."""

from __future__ import annotations

import resource

import pytest

from schemas import codec as codec_module
from schemas.codec import HEADER_SIZE, codec
from schemas.decoded_size import check_decoded_size
from streams.client import job_request
from workers.errors import CorruptRecord, DecodedTooLarge

BELL = 'OPENQASM 2.0; include "qelib1.inc"; qreg q[2]; creg c[2]; h q[0]; measure q -> c;'


def _request(**fields) -> bytes:
    return codec("JobRequest").encode(job_request(**{"workflow_id": "wf-size", "circuit": BELL,
                                                     "shots": 8, **fields}))


def test_a_million_empty_observables_are_refused_before_they_are_built() -> None:
    data = _request(observables=[{"terms": []}] * 1_000_000)
    assert len(data) < 1_100_000  # about one byte each
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(DecodedTooLarge, match="more than 32 MiB once decoded"):
        codec("JobRequest").decode(data)
    # Decoded, they took 253 MB.
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 20 * 1024
    assert DecodedTooLarge("x").reason == "DecodedTooLarge"
    assert not DecodedTooLarge("x").retryable


@pytest.mark.parametrize("fields", [
    {"parameter_sets": [[]] * 1_000_000},
    {"fallback": ["ab"] * 700_000},
    {"metadata": {f"k{i}": "" for i in range(300_000)}},
])
def test_other_cheap_empty_values_are_refused_too(fields) -> None:
    with pytest.raises(DecodedTooLarge):
        codec("JobRequest").decode(_request(**fields))


def test_large_records_of_real_content_still_decode() -> None:
    terms = [{"pauli": "".join("IXYZ"[(k >> (2 * i)) & 3] for i in range(8)), "coeff": 0.5}
             for k in range(1, 40_001)]
    for fields in ({"observables": [{"terms": terms}]},
                   {"parameter_sets": [[0.1 * i] * 100 for i in range(1000)]},
                   {"circuit": BELL + "// x\n" * 50_000}):
        data = _request(**fields)
        assert len(data) > codec_module.CHECK_DECODED_ABOVE_BYTES
        decoded = codec("JobRequest").decode(data)
        assert {name: decoded[name] for name in fields} == fields


def test_the_estimate_follows_the_schema_and_stops_at_the_budget() -> None:
    writer = codec("JobRequest")._parsed
    data = _request(parameter_sets=[[0.5] * 10] * 100)  # 1,000 doubles: skipped per block
    check_decoded_size(writer, data, HEADER_SIZE, budget=100 * 1000 * 32 // 10 + 64 << 10)
    with pytest.raises(DecodedTooLarge):
        check_decoded_size(writer, data, HEADER_SIZE, budget=1000 * 24)


@pytest.mark.parametrize("cut", [HEADER_SIZE + 1, HEADER_SIZE + 5, -3])
def test_a_malformed_datum_is_left_for_the_reader(cut: int) -> None:
    data = _request(observables=[{"terms": []}] * 100_000)[:cut]
    check_decoded_size(codec("JobRequest")._parsed, data, HEADER_SIZE, budget=1 << 40)
    with pytest.raises(CorruptRecord):
        codec("JobRequest").decode(data)


def test_small_counts_cost_nothing_so_a_large_real_result_decodes() -> None:
    """CPython shares one object per integer from -5 to 256: counted at 28 bytes each, a
    4.4 MB JobResult of 1,000 circuits × 300 outcomes came to more than 32 MiB and was
    refused (red-team run); it takes about 24 MiB decoded."""
    import copy
    import random
    import tracemalloc

    from tests.unit.schemas.test_codec import sample

    record, rng = sample("JobResult"), random.Random(1)
    template, record["circuits"] = record["circuits"][0], []
    for _ in range(1000):
        circuit = copy.deepcopy(template)
        circuit["counts"] = {format(k, "012b"): rng.randint(1, 200)
                             for k in rng.sample(range(4096), 300)}
        record["circuits"].append(circuit)
    data = codec("JobResult").encode(record)
    tracemalloc.start()
    decoded = codec("JobResult").decode(data)
    taken = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert decoded["circuits"][999]["counts"] == record["circuits"][999]["counts"]
    writer = codec("JobResult")._parsed
    check_decoded_size(writer, data, HEADER_SIZE, budget=int(taken * 1.1))
    with pytest.raises(DecodedTooLarge):
        check_decoded_size(writer, data, HEADER_SIZE, budget=int(taken * 0.8))


def test_records_are_counted_at_what_cpython_takes_for_their_dicts() -> None:
    """A record's dict was counted at 64 bytes and 24 a field, where CPython's takes 184 up
    to five fields: 50,000 empty observables came out at 0.61 of their decoded size, and
    210,000 (52 MB decoded from a 210 KB record) passed the 32 MiB budget (a red-team run)."""
    import tracemalloc

    data = _request(observables=[{"terms": []}] * 50_000)
    tracemalloc.start()
    decoded = codec("JobRequest").decode(data)
    taken = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    estimate = codec("JobRequest").decoded_bytes(data)
    del decoded
    assert 0.95 * taken < estimate < 1.15 * taken
    with pytest.raises(DecodedTooLarge):
        codec("JobRequest").decode(_request(observables=[{"terms": []}] * 210_000))
