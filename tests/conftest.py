"""The session's brokers: every broker-using test runs on the embedded Tansu and on Apache Kafka.

`broker_address` is parametrized: `tansu` starts the embedded broker, `kafka` a 1-node Apache
Kafka 4.x (KRaft) from the pinned Maven jars (streams/kafka_local.py), or the cluster named by
KAFKA_BOOTSTRAP_SERVERS. Nothing is skipped: a broker that cannot start fails the tests.
"""

import os

import pytest

from streams.broker import EmbeddedBroker
from streams.kafka_local import KafkaCluster

BROKERS = ["tansu", "kafka"]


def start_kafka(tmp_path_factory) -> KafkaCluster:
    data = tmp_path_factory.mktemp("kafka")
    return KafkaCluster(nodes_count=1, data_dir=data).start()


@pytest.fixture(scope="session", params=BROKERS)
def broker_address(request, tmp_path_factory):
    """(bootstrap servers, profile) of the session's broker of this parameter."""
    if request.param == "kafka":
        external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if external:
            yield external, "kafka"
            return
        cluster = start_kafka(tmp_path_factory)
        try:
            yield cluster.bootstrap, "kafka"
        finally:
            cluster.stop()
        return
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap, "embedded"
