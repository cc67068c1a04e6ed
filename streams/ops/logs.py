"""Worker log format: Faust's text lines, or one JSON object per line on request.

`QLANE_LOG_FORMAT=json` (or `qlane worker --log-format json`) makes every record a JSON
object with `time`, `level`, `logger`, `process`, `message` and whatever context the call
passed as `extra` (`workflow_id`, `stage`, `state`), so a log pipeline can filter one job.
"""

from __future__ import annotations

import logging
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


def lifecycle_level(state: str) -> int:
    """Terminal states at INFO, the steps in between at DEBUG."""
    return logging.INFO if state in TERMINAL_STATES else logging.DEBUG
