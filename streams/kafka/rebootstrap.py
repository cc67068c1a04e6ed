"""Metadata from the bootstrap addresses again when no known broker answers.

aiokafka asks for metadata only the brokers its last answer listed, and forgets the
bootstrap addresses after the first answer. A cluster that lost its quorum answers with the
one broker left; once the others were back, a client whose view was still that one broker
(a client's metadata was refreshed every 300 s) had nobody else to ask when it went down:
its jobs stopped for the whole outage, 64 s, while Kafka moved the leaders in 12.8 s (a
red-team run). Java's client asks its bootstrap addresses again in that case
(`metadata.recovery.strategy=rebootstrap`, KIP-899); `install` gives every aiokafka client
of the process, Faust's included, the same fallback.
"""

from __future__ import annotations

import logging

from aiokafka.client import AIOKafkaClient
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

log = logging.getLogger("qlane")


async def from_bootstrap_addresses(client: AIOKafkaClient, cluster_metadata, topics) -> bool:
    """One metadata answer from the first bootstrap address that gives one, into
    `cluster_metadata`; False when none does."""
    request = MetadataRequest(list(topics) if topics else None)
    for host, port, _ in client.hosts:
        try:
            conn = await create_conn(
                host, port, client_id=client._client_id,
                request_timeout_ms=client._request_timeout_ms,
                ssl_context=client._ssl_context, security_protocol=client._security_protocol,
                max_idle_ms=client._connections_max_idle_ms,
                sasl_mechanism=client._sasl_mechanism,
                sasl_plain_username=client._sasl_plain_username,
                sasl_plain_password=client._sasl_plain_password,
                sasl_kerberos_service_name=client._sasl_kerberos_service_name,
                sasl_kerberos_domain_name=client._sasl_kerberos_domain_name,
                sasl_oauth_token_provider=client._sasl_oauth_token_provider)
        except (TimeoutError, OSError, KafkaError):
            continue
        try:
            metadata = await conn.send(request)
        except (TimeoutError, KafkaError):
            continue
        finally:
            conn.close()
        if metadata.brokers:
            cluster_metadata.update_metadata(metadata)
            log.info("metadata from bootstrap address %s:%s: no known broker answered", host,
                     port)
            return True
    return False


def install() -> None:
    """Idempotent: every AIOKafkaClient falls back to its bootstrap addresses."""
    known_brokers_only = AIOKafkaClient._metadata_update
    if getattr(known_brokers_only, "qlane_rebootstrap", False):
        return

    async def metadata_update(self, cluster_metadata, topics):
        if await known_brokers_only(self, cluster_metadata, topics):
            return True
        return await from_bootstrap_addresses(self, cluster_metadata, topics)

    metadata_update.qlane_rebootstrap = True  # type: ignore[attr-defined]
    AIOKafkaClient._metadata_update = metadata_update
