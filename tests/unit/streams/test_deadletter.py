from streams.deadletter import SourceRecord, dead_letter_headers, faust_timestamp
from workers.errors import BackendUnavailable, InvalidCircuit

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


def test_timestamp_survives_faust_millisecond_truncation():
    for ms in (1795273209637, 1, 999, 1700000000001, 1795273209999):
        assert int(faust_timestamp(ms) * 1000.0) == ms
    assert faust_timestamp(None) is None
