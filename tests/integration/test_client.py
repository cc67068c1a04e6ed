"""The Kafka client (streams/client/kafka.py) against a real broker, without workers."""

import asyncio
import uuid

import aiokafka.cluster
import pytest

from streams.client.errors import BrokerTimeout
from streams.client.timeouts import Deadline, open_client
from streams.settings import Settings


def test_a_client_waits_for_outcome_topics_that_do_not_exist_without_spinning(
        broker_address, monkeypatch):
    """Assigned before they existed (a wrong prefix, no worker yet), aiokafka asked for their
    offsets without a pause: half a core until the timeout (a red-team run)."""
    bootstrap, profile = broker_address
    settings = Settings(broker=bootstrap, profile=profile,
                        topic_prefix=f"absent-{uuid.uuid4().hex[:8]}")
    answers = []  # metadata answers the client took in
    update = aiokafka.cluster.ClusterMetadata.update_metadata

    def counted(self, metadata):
        answers.append(metadata)
        return update(self, metadata)

    monkeypatch.setattr(aiokafka.cluster.ClusterMetadata, "update_metadata", counted)

    async def watch() -> None:
        async with open_client(settings, None, 3.0, watch=True):
            pass

    with pytest.raises(BrokerTimeout, match="reading the outcome topics") as raised:
        asyncio.run(watch())
    # it names what it waited for: the broker answered all along
    assert f"{settings.topic_prefix}.status" in str(raised.value)
    assert "no answer from the broker" not in str(raised.value)
    # a lookup a second, not a loop of them (thousands in 3 s before)
    assert len(answers) < 60


def test_a_close_given_up_on_leaves_no_connection_open(broker_address):
    """A producer's stop waiting for a batch bound to a frozen leader was cut at the caller's
    time before it reached its client's close: the connections stayed open for as long as
    the failed job lived (one or two per job; a red-team run)."""
    bootstrap, profile = broker_address
    settings = Settings(broker=bootstrap, profile=profile)
    clients = []

    async def flush_that_never_ends() -> None:
        await asyncio.Event().wait()

    async def use() -> None:
        async with open_client(settings, None, Deadline(3.0)) as client:
            await client.producer.client.fetch_all_metadata()
            clients.append(client)
            client.producer._message_accumulator.close = flush_that_never_ends
            await asyncio.sleep(3.0)  # the caller's time spent: the close gets its grace

    asyncio.run(use())
    connections = list(clients[0].producer.client._conns.values())
    assert connections
    assert not any(connection.connected() for connection in connections)
