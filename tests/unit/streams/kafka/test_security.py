import asyncio
import re
import ssl
from pathlib import Path

import faust
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NodeNotReadyError,
    TopicAuthorizationFailedError,
)

from streams.kafka.security import AccessRefused, faust_credentials, kafka_options, preflight
from streams.settings import Settings

STREAMS = Path(__file__).resolve().parents[4] / "streams"


def test_plaintext_has_only_the_servers_and_on_kafka_a_short_metadata_age():
    """A client left with aiokafka's 300 s metadata age kept a view of one broker after a
    lost quorum, and stopped for the whole outage when that broker went (a red-team run)."""
    from streams.kafka.security import KAFKA_METADATA_MAX_AGE_MS

    options = kafka_options(Settings(broker="k1:9092,k2:9092", profile="embedded"))
    assert options == {"bootstrap_servers": "k1:9092,k2:9092", "security_protocol": "PLAINTEXT"}
    options = kafka_options(Settings(broker="k1:9092,k2:9092", profile="kafka"))
    assert options == {"bootstrap_servers": "k1:9092,k2:9092", "security_protocol": "PLAINTEXT",
                       "metadata_max_age_ms": KAFKA_METADATA_MAX_AGE_MS}
    assert faust_credentials(Settings()) == {}


def test_sasl_ssl_reaches_aiokafka_and_faust():
    settings = Settings(broker="k:9093", security_protocol="SASL_SSL",
                        sasl_mechanism="SCRAM-SHA-512", sasl_username="qlane",
                        sasl_password="s3cret")
    options = kafka_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("qlane", "s3cret")
    assert isinstance(options["ssl_context"], ssl.SSLContext)
    credentials = faust_credentials(settings)["broker_credentials"]
    assert isinstance(credentials, faust.SASLCredentials)
    assert "s3cret" not in repr(settings)  # the password never reaches a log line


def test_ssl_without_sasl():
    options = kafka_options(Settings(security_protocol="SSL"))
    assert isinstance(options["ssl_context"], ssl.SSLContext) and "sasl_mechanism" not in options
    credentials = faust_credentials(Settings(security_protocol="SSL"))["broker_credentials"]
    assert isinstance(credentials, faust.SSLCredentials)


def test_every_kafka_client_in_streams_gets_the_connection_options():
    constructions = 0
    for path in STREAMS.rglob("*.py"):
        text = path.read_text()
        for match in re.finditer(r"AIOKafka(Consumer|Producer|AdminClient)\(", text):
            call = text[match.end():match.end() + 200]
            constructions += 1
            assert "**kafka_options(" in call or "**client_options(" in call or (
                "**{**kafka_options(" in call), f"{path.name}: {call[:80]!r}"
    assert constructions >= 8


# --- start-up checks while the broker is unavailable ----------------------------------------

def flaky_ensure_topics(failures):
    calls = []

    async def ensure_topics(settings):
        calls.append(settings)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return ["created"]

    return ensure_topics, calls


def startup_settings(**overrides):
    return Settings(profile="embedded", retry_backoff_s=0.001, retry_backoff_max_s=0.002,
                    **overrides)


def test_start_up_checks_are_retried_while_a_node_is_down():
    ensure_topics, calls = flaky_ensure_topics(
        [NodeNotReadyError("node 1"), KafkaConnectionError("closed")])
    assert asyncio.run(preflight(startup_settings(), ensure_topics)) == ["created"]
    assert len(calls) == 3


def test_a_refusal_or_a_permanent_broker_error_is_not_retried():
    for error in (AccessRefused("no ACL"), TopicAuthorizationFailedError()):
        ensure_topics, calls = flaky_ensure_topics([error])
        with pytest.raises(type(error)):
            asyncio.run(preflight(startup_settings(), ensure_topics))
        assert len(calls) == 1


def test_an_attempt_that_never_answers_ends_within_the_wait():
    """A partition without a leader: aiokafka waits for its position without end, and a
    worker's start hung silently past 300 s (a red-team run)."""
    import time

    calls = []

    async def ensure_topics(settings):
        calls.append(settings)
        await asyncio.sleep(3600)

    started = time.monotonic()
    with pytest.raises(KafkaTimeoutError):
        asyncio.run(preflight(startup_settings(startup_broker_wait_s=2), ensure_topics))
    assert time.monotonic() - started < 5
    assert len(calls) >= 1


def test_assign_settled_gives_up_on_a_partition_without_a_leader():
    from aiokafka import TopicPartition

    from streams.kafka.compat import PartitionUnavailable, assign_settled
    from streams.kafka.security import broker_unavailable

    class NoLeader:
        def assign(self, partitions):
            self.partitions = partitions

        async def position(self, tp):
            await asyncio.sleep(3600)

    with pytest.raises(PartitionUnavailable) as raised:
        asyncio.run(assign_settled(NoLeader(), [TopicPartition("t", 3)], timeout_s=0.2))
    assert "t partition 3" in str(raised.value) and broker_unavailable(raised.value)


def test_the_start_up_wait_is_bounded():
    ensure_topics, calls = flaky_ensure_topics([NodeNotReadyError("node 1")] * 1000)
    with pytest.raises(NodeNotReadyError):
        asyncio.run(preflight(startup_settings(startup_broker_wait_s=0), ensure_topics))
    assert len(calls) == 1


def test_clients_wait_for_a_broker_as_long_as_the_workers_do():
    """With aiokafka's 40 s, a frozen node of three held every client submit to a partition
    it led for 40 s, while KRaft moved its leaders after 9 s (a red-team run)."""
    from streams.kafka.security import client_options
    from streams.settings import Settings

    options = client_options(Settings(profile="kafka", broker="k:9092",
                                      kafka_request_timeout_s=12))
    assert options["request_timeout_ms"] == 12_000
    assert "request_timeout_ms" not in client_options(Settings(profile="embedded",
                                                               broker="k:9092"))
