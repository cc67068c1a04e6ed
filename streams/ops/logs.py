"""Worker log format: Faust's text lines, or one JSON object per line on request.

`QLANE_LOG_FORMAT=json` (or `qlane worker --log-format json`) makes every record a JSON
object with `time`, `level`, `logger`, `process`, `message` and whatever context the call
passed as `extra` (`workflow_id`, `stage`, `state`), so a log pipeline can filter one job.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Literal

LogFormat = Literal["text", "json"]

JSON_FIELDS = "%(levelname)s %(name)s %(process)d %(message)s"

# Job lifecycle states that end a workflow's trip through the pipeline (or a stage's part in it).
TERMINAL_STATES = frozenset({"done", "failed", "duplicate", "fallback"})


def logging_config(log_format: LogFormat, level: str) -> dict | None:
    """A `logging.config.dictConfig` for the worker; None keeps Faust's own text format."""
    if log_format == "text":
        return None
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "json": {
                "()": "pythonjsonlogger.json.JsonFormatter",
                "fmt": JSON_FIELDS,
                "rename_fields": {"levelname": "level", "name": "logger"},
                "timestamp": "time",
            }
        },
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["default"]},
    }


# C0 and C1 controls (newlines, ESC of ANSI and OSC sequences, DEL) and the Unicode line
# separators and bidirectional overrides: what lets text from a record forge a log line or
# rewrite an operator's terminal.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str, keep_lines: bool = False) -> str:
    """`text` with every control character written as an escape (\\n, \\x1b, \\u202e);
    `keep_lines` leaves newlines and tabs alone."""
    def escape(match: re.Match) -> str:
        char = match.group()
        if keep_lines and char in "\n\t":
            return char
        return _NAMED.get(char) or (
            f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}")
    return _UNPRINTABLE.sub(escape, text)


class OneLineRecord(logging.LogRecord):
    """A log record whose message cannot break its line: workflow ids, keys and error
    messages come from producers, and an id holding a newline wrote a forged CRITICAL line
    into a worker's log, and ANSI sequences reached the terminal (a red-team run). qlane's
    own records (the `qlane` logger) stay on one line; other libraries' keep their newlines
    (Faust prints its partition assignment as a table), with every other control escaped."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if self.exc_info and self.exc_info[0] is not None:
            # Formatters print `exc_text` when it is set: the traceback with its messages
            # escaped, as a message is (an error's text can quote a record).
            self.exc_text = escaped_traceback(self.exc_info)

    def getMessage(self) -> str:  # noqa: N802 (logging's name)
        ours = self.name == "qlane" or self.name.startswith("qlane.")
        return printable(super().getMessage(), keep_lines=not ours)


def escaped_traceback(exc_info) -> str:
    """A traceback as `logging` prints it, each exception's message and notes on one line:
    the frames are the program's own text, the messages may be a producer's."""
    chunks = []
    for chunk in traceback.TracebackException(*exc_info).format():
        if chunk.startswith(_TRACEBACK_OWN_TEXT):
            chunks.append(chunk)
        else:
            chunks.append(printable(chunk.removesuffix("\n")) + "\n")
    return "".join(chunks).removesuffix("\n")


# What a traceback's lines start with apart from an exception's message (frames are indented).
_TRACEBACK_OWN_TEXT = ("  ", "Traceback (most recent call last):", "\nThe above exception",
                       "\nDuring handling of the above")


def keep_records_on_one_line() -> None:
    logging.setLogRecordFactory(OneLineRecord)


def lifecycle_level(state: str) -> int:
    """Terminal states at INFO, the steps in between at DEBUG."""
    return logging.INFO if state in TERMINAL_STATES else logging.DEBUG
