"""Worker log formats (streams/ops/logs.py)."""

import json
import logging
import logging.config

import pytest

from streams.ops.logs import lifecycle_level, logging_config


@pytest.fixture
def restore_root_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_text_keeps_fausts_format():
    assert logging_config("text", "info") is None


def test_json_is_one_object_per_line_with_the_extra_context(capsys, restore_root_logging):
    logging.config.dictConfig(logging_config("json", "info"))
    log = logging.getLogger("qlane.test")
    log.info("wf-1 done (mitigate)", extra={"workflow_id": "wf-1", "stage": "mitigate",
                                            "state": "done"})
    log.debug("not at info")
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == "wf-1 done (mitigate)"
    assert record["level"] == "INFO"
    assert record["logger"] == "qlane.test"
    assert (record["workflow_id"], record["stage"], record["state"]) == ("wf-1", "mitigate", "done")
    assert record["time"].startswith("20")


def test_only_terminal_states_log_at_info():
    assert lifecycle_level("done") == logging.INFO
    assert lifecycle_level("duplicate") == logging.INFO
    assert lifecycle_level("prepared") == logging.DEBUG


def test_a_producers_text_cannot_break_a_log_line_or_reach_the_terminal() -> None:
    """A workflow id holding a newline wrote a forged CRITICAL line into a worker's text log;
    ANSI and OSC sequences in a key cleared and retitled an operator's terminal in `qlane
    dlq list` (red-team run)."""
    import io
    import logging

    from streams.ops.logs import OneLineRecord, printable

    hostile = ("wf\n[2026-12-05 14:31:00,000] [4242] [CRITICAL] forged"
               "\x1b[2K\r\x1b]0;pwned\x07\u202e")
    assert printable(hostile) == (
        "wf\\n[2026-12-05 14:31:00,000] [4242] [CRITICAL] forged\\x1b[2K\\r\\x1b]0;pwned\\x07"
        "\\u202e")
    assert printable("acme.nightly-7.0 done — ünïcode") == "acme.nightly-7.0 done — ünïcode"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("qlane.test.one-line")
    logger.addHandler(handler)
    previous = logging.getLogRecordFactory()
    logging.setLogRecordFactory(OneLineRecord)
    try:
        logger.warning("%s done (mitigate)", hostile)
    finally:
        logging.setLogRecordFactory(previous)
        logger.removeHandler(handler)
    assert stream.getvalue().count("\n") == 1 and "\x1b" not in stream.getvalue()


def test_other_libraries_keep_their_newlines_but_no_other_control() -> None:
    """Faust logs its partition assignment as a table, one row per line (the benchmark reads
    it); escaped newlines broke it. Escapes and the like are still written out."""
    import io
    import logging

    from streams.ops.logs import OneLineRecord

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    faust_like = logging.getLogger("faust.assignor.test")
    faust_like.addHandler(handler)
    previous = logging.getLogRecordFactory()
    logging.setLogRecordFactory(OneLineRecord)
    try:
        faust_like.warning("| topic | partitions |\n| qlane.jobs | {0, 2} |\x1b]0;t\x07")
    finally:
        logging.setLogRecordFactory(previous)
        faust_like.removeHandler(handler)
    assert stream.getvalue() == "| topic | partitions |\n| qlane.jobs | {0, 2} |\\x1b]0;t\\x07\n"
