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


def logged_with_one_line_records(logger_name: str, message: str, *args,
                                 exc_info=None) -> str:
    """What a handler writes for one WARNING of `logger_name` with OneLineRecord in force."""
    import io
    import logging

    from streams.ops.logs import OneLineRecord

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    previous = logging.getLogRecordFactory()
    logging.setLogRecordFactory(OneLineRecord)
    try:
        logger.warning(message, *args, exc_info=exc_info)
    finally:
        logging.setLogRecordFactory(previous)
        logger.removeHandler(handler)
    return stream.getvalue()


def test_a_producers_text_cannot_break_a_log_line_or_reach_the_terminal() -> None:
    """A workflow id holding a newline wrote a forged CRITICAL line into a worker's text log;
    ANSI and OSC sequences in a key cleared and retitled an operator's terminal in `qlane
    dlq list` (red-team run)."""
    from streams.ops.logs import printable

    hostile = ("wf\n[2026-12-05 14:31:00,000] [4242] [CRITICAL] forged"
               "\x1b[2K\r\x1b]0;pwned\x07\u202e")
    assert printable(hostile) == (
        "wf\\n[2026-12-05 14:31:00,000] [4242] [CRITICAL] forged\\x1b[2K\\r\\x1b]0;pwned\\x07"
        "\\u202e")
    assert printable("acme.nightly-7.0 done — ünïcode") == "acme.nightly-7.0 done — ünïcode"
    written = logged_with_one_line_records("qlane.test.one-line", "%s done (mitigate)", hostile)
    assert written.count("\n") == 1 and "\x1b" not in written


def test_other_libraries_keep_their_newlines_but_no_other_control() -> None:
    """Faust logs its partition assignment as a table, one row per line (the benchmark reads
    it); escaped newlines broke it. Escapes and the like are still written out."""
    written = logged_with_one_line_records(
        "faust.assignor.test", "| topic | partitions |\n| qlane.jobs | {0, 2} |\x1b]0;t\x07")
    assert written == "| topic | partitions |\n| qlane.jobs | {0, 2} |\\x1b]0;t\\x07\n"


def test_an_errors_text_in_a_traceback_cannot_break_its_line() -> None:
    """A traceback printed the exception's message as it was: an error quoting a record
    could still forge a log line (`log.exception` of a batch that failed as a whole)."""
    forged = "[2026-12-05 14:31:00,000] [4242] [CRITICAL] forged"
    try:
        try:
            raise KeyError("first")
        except KeyError as cause:
            raise ValueError(f"bad job\n{forged}\x1b[2K") from cause
    except ValueError as error:
        written = logged_with_one_line_records("qlane.test.tb", "batch failed", exc_info=error)
    lines = written.splitlines()
    assert not any(line.startswith(forged) for line in lines)
    assert f"ValueError: bad job\\n{forged}\\x1b[2K" in lines
    assert "KeyError: 'first'" in lines  # the chain is kept
    assert any(line.startswith("  File ") for line in lines)
    assert "Traceback (most recent call last):" in lines
