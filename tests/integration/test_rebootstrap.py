"""A client whose known brokers are all gone asks its bootstrap addresses again."""

from __future__ import annotations

import asyncio
import socket

from aiokafka.client import AIOKafkaClient
from aiokafka.structs import BrokerMetadata

import streams.kafka  # noqa: F401 - installs the fallback, as any qlane process does
from streams.kafka.security import kafka_options


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_client_whose_known_brokers_are_gone_asks_its_bootstrap_addresses(settings):
    """After a lost quorum a client's view held the one broker left; when it went down
    too, the client had nobody to ask and stopped for the whole outage (64 s, while Kafka
    moved the leaders in 12.8 s; a red-team run). Here its view names a broker that is not
    there: the next metadata update comes from the bootstrap address."""

    async def go() -> tuple[bool, set[int]]:
        client = AIOKafkaClient(**kafka_options(settings))
        await client.bootstrap()
        try:
            real = {broker.nodeId for broker in client.cluster.brokers()}
            gone = max(real) + 100
            client.cluster._brokers = {  # noqa: SLF001 - a view of one broker, now gone
                gone: BrokerMetadata(gone, "127.0.0.1", unused_port(), None)}
            updated = await client._metadata_update(client.cluster, set())  # noqa: SLF001
            seen = {broker.nodeId for broker in client.cluster.brokers()}
            return updated and seen == real, seen
        finally:
            await client.close()

    updated, seen = asyncio.run(go())
    assert updated, seen
