"""The Faust settings a worker starts with, per profile."""

from __future__ import annotations

import faust

from streams.app import KAFKA_METADATA_MAX_AGE_MS, faust_settings
from streams.settings import Settings


def test_on_kafka_a_worker_waits_for_a_silent_broker_seconds_not_minutes():
    """With Faust's defaults (1,200 s for the producer, 90 s otherwise, metadata every 30 s)
    one frozen node of three stopped all processing for its whole 60-100 s freeze (red-team
    runs); the timeouts must stay above the 6 s group session, or Faust refuses them."""
    kafka = faust.App("t-kafka", **faust_settings(
        Settings(profile="kafka", broker="localhost:9092", kafka_request_timeout_s=12)))
    assert kafka.conf.producer_request_timeout == 12
    assert kafka.conf.broker_request_timeout == 12
    assert kafka.conf.broker_request_timeout > kafka.conf.broker_session_timeout
    assert kafka.conf.producer_metadata_max_age_ms == KAFKA_METADATA_MAX_AGE_MS
    assert kafka.conf.consumer_metadata_max_age_ms == KAFKA_METADATA_MAX_AGE_MS
    embedded = faust.App("t-embedded", **faust_settings(Settings(profile="embedded")))
    assert embedded.conf.producer_request_timeout == faust.App("t").conf.producer_request_timeout


def test_a_worker_loads_the_openqasm3_parser_before_its_threads_start():
    """The warm-up thread and a stage thread imported openqasm3 at once, and the stage was
    handed the half-initialised package: a valid variational job was dead-lettered as
    InvalidCircuit "No module named 'openqasm3._antlr.qasm3Lexer'" (a red-team run)."""
    import subprocess
    import sys

    script = ("import sys\n"
              "from streams.app import create_app\n"
              "from streams.settings import Settings\n"
              "before = 'openqasm3._antlr.qasm3Lexer' in sys.modules\n"
              "create_app(Settings(profile='kafka', broker='localhost:9092'))\n"
              "print(before, 'openqasm3._antlr.qasm3Lexer' in sys.modules,\n"
              "      'qiskit_qasm3_import' in sys.modules)\n")
    loaded = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=True)
    assert loaded.stdout.split() == ["False", "True", "True"], loaded.stdout + loaded.stderr
