"""What a client shows its user: dead-letter headers, and aiokafka's warnings in an outage."""

from __future__ import annotations

import logging

from streams.client import Client
from streams.client.kafka import shown_headers
from streams.settings import Settings


def test_shown_headers_keep_null_values_and_every_value_of_a_repeated_name():
    """`qlane dlq show` printed one value per name: a repeated header lost all but its last,
    and a null value printed as an empty string."""
    headers = [("trace", b"a"), ("x-null", None), ("trace", b"b"), ("qlane.dlq.stage", b"x"),
               ("trace", None)]
    assert shown_headers(headers) == {"trace": ["a", "b", None], "x-null": None,
                                      "qlane.dlq.stage": "x"}
    assert shown_headers(None) == {}


def test_a_client_logs_a_run_of_identical_broker_warnings_once_per_interval(caplog):
    """A client's console filled with aiokafka's "Unable connect to node" lines, one per
    retry, while its broker was away (a red-team run); the workers had a guard, clients not."""
    Client(Settings(topic_prefix="t.qlane", broker_warning_interval_s=30))
    noisy = logging.getLogger("aiokafka.conn")
    with caplog.at_level(logging.WARNING, logger="aiokafka"):
        for _ in range(200):
            noisy.warning("Unable connect to %r: %s", "node-1", "refused")
    assert len([r for r in caplog.records if r.name == "aiokafka.conn"]) == 1
