import pytest

from streams.workflow.deadletter import (
    OMITTED_HEADER,
    SourceRecord,
    dead_letter_headers,
    fit_dead_letter,
    record_bytes,
)
from streams.workflow.results import check_result_fits
from workers.errors import BackendUnavailable, InvalidCircuit, ResultTooLarge

SOURCE = SourceRecord(
    topic="qlane.jobs", partition=2, offset=41, timestamp_ms=1795273209637,
    key=b"wf-9", value=b"\xc3\x01garbage",
    headers=(("trace", b"abc"), ("qlane.dlq.stage", b"old")),
)


def test_headers_keep_originals_and_add_utf8_context():
    headers = dead_letter_headers(
        SOURCE, stage="preprocess", error=InvalidCircuit("line 3: unknown gate"),
        attempts=2, worker_version="0.1.0", first_failure_ms=10, now_ms=20,
    )
    as_dict = {name: value.decode("utf-8") for name, value in headers}
    assert headers[0] == ("trace", b"abc")
    assert as_dict["qlane.dlq.source.topic"] == "qlane.jobs"
    assert as_dict["qlane.dlq.source.partition"] == "2"
    assert as_dict["qlane.dlq.source.offset"] == "41"
    assert as_dict["qlane.dlq.stage"] == "preprocess"  # the stale one is replaced
    assert as_dict["qlane.dlq.error.class"] == "InvalidCircuit"
    assert as_dict["qlane.dlq.error.retryable"] == "false"
    assert as_dict["qlane.dlq.error.message"] == "line 3: unknown gate"
    assert as_dict["qlane.dlq.attempts"] == "2"
    assert as_dict["qlane.dlq.first.failure"] == "10"
    assert as_dict["qlane.dlq.last.failure"] == "20"
    assert as_dict["qlane.dlq.worker.version"] == "0.1.0"
    assert sum(1 for name, _ in headers if name == "qlane.dlq.stage") == 1


def test_retryable_and_foreign_errors_are_named():
    headers = dict(dead_letter_headers(SOURCE, stage="execute", error=BackendUnavailable("x"),
                                       attempts=4, worker_version="v"))
    assert headers["qlane.dlq.error.retryable"] == b"true"
    headers = dict(dead_letter_headers(SOURCE, stage="execute", error=ZeroDivisionError("y"),
                                       attempts=1, worker_version="v"))
    assert headers["qlane.dlq.error.class"] == b"ZeroDivisionError"


def test_a_dead_letter_that_fits_is_sent_whole():
    headers = [("trace", b"t"), ("qlane.dlq.stage", b"preprocess")]
    assert fit_dead_letter(b"wf-1", b"v" * 1000, headers, 1_000_000) == (
        b"wf-1", b"v" * 1000, headers)


def test_a_record_with_neither_key_nor_value_gets_a_dead_letter_a_producer_sends():
    """aiokafka asserts that a record has a key or a value: a keyless tombstone on a job topic,
    or an unreadable batch too large to carry, stopped the worker at every start (a red-team
    run)."""
    ours = [("qlane.dlq.stage", b"preprocess")]
    key, value, headers = fit_dead_letter(None, None, ours, 1_000_000)
    assert key is None and value == b""
    assert headers[:1] == ours and dict(headers)[OMITTED_HEADER].startswith(
        b"a null key and a null value")


def test_what_does_not_fit_the_producer_is_left_out_and_named():
    ours = [("qlane.dlq.source.offset", b"41")]
    value = b"v" * 2_000_000
    key, kept, headers = fit_dead_letter(b"wf-1", value, [("trace", b"t"), *ours], 1_000_000)
    assert key == b"wf-1" and kept is None
    assert headers[:2] == [("trace", b"t"), *ours]
    assert dict(headers)[OMITTED_HEADER].startswith(b"value (2000000 bytes) left out")
    assert record_bytes(key, kept, headers) <= 1_000_000

    theirs = [(f"h{i}", b"x" * 1000) for i in range(1500)]
    key, kept, headers = fit_dead_letter(b"k" * 900_000, value, theirs + ours, 1_000_000)
    assert kept is None and key == b"k" * 900_000
    assert headers[:-1] == ours
    assert b"1500 original headers" in dict(headers)[OMITTED_HEADER]

    key, kept, headers = fit_dead_letter(b"k" * 2_000_000, None, ours, 1_000_000)
    assert key is None and b"key (2000000 bytes)" in dict(headers)[OMITTED_HEADER]
    assert record_bytes(key, kept, headers) <= 1_000_000


def test_a_header_flood_loses_its_headers_not_the_value():
    """The value went first, and a record of 1,500 forged 1 KB headers lost its job with
    them, which is what a replay of the dead letter needs."""
    ours = [("qlane.dlq.source.offset", b"41")]
    theirs = [(f"h{i}", b"x" * 1000) for i in range(1500)]
    key, kept, headers = fit_dead_letter(b"wf-1", b"v" * 5000, theirs + ours, 1_000_000)
    assert key == b"wf-1" and kept == b"v" * 5000
    assert headers[:-1] == ours
    assert dict(headers)[OMITTED_HEADER].startswith(b"1500 original headers left out")
    assert record_bytes(key, kept, headers) <= 1_000_000


def test_a_dead_letter_whose_own_headers_pass_the_limit_is_cut_and_still_sent():
    """A forged 999,500-byte copy header went into a workflow's entry and its dead stage
    record's `qlane.dlq.job.origin`: with value, original headers and key left out, the dead
    letter still passed the limit, and its send (no key, no value) stopped the worker with
    the record committed: the job was charged, and no status, result or dead letter came."""
    ours = [("qlane.dlq.source.offset", b"41"), ("qlane.dlq.job.origin", b"o" * 999_500)]
    key, kept, headers = fit_dead_letter(b"wf-1", b"v" * 10_000, [("trace", b"t"), *ours],
                                         1_000_000)
    assert record_bytes(key, kept, headers) <= 1_000_000
    assert key is not None or kept is not None
    found = dict(headers)
    assert found["qlane.dlq.source.offset"] == b"41"
    assert found["qlane.dlq.job.origin"] == b"o" * 1024
    assert b"headers qlane.dlq.job.origin" in found[OMITTED_HEADER]


def test_a_result_must_fit_a_record_as_itself_and_as_stored_in_its_table_entry():
    check_result_fits(b"r" * 700_000, 1_000_000)
    with pytest.raises(ResultTooLarge, match="as stored in its table entry"):
        check_result_fits(b"r" * 800_000, 1_000_000)  # 1,066,668 bytes as base64
    with pytest.raises(ResultTooLarge):
        check_result_fits(b"r" * 1_000_000, 1_000_000)
