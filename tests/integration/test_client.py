"""The Kafka client (streams/client/kafka.py) against a real broker, without workers."""

import asyncio
import uuid

import aiokafka.cluster
import pytest

from streams.client.errors import BrokerTimeout
from streams.client.timeouts import open_client
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

    with pytest.raises(BrokerTimeout, match="reading the outcome topics"):
        asyncio.run(watch())
    # a lookup a second, not a loop of them (thousands in 3 s before)
    assert len(answers) < 60
