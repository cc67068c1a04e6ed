"""The session's brokers: every broker-using test runs on the embedded Tansu and on Apache Kafka.

`broker_address` is parametrized: `tansu` starts the embedded broker, `kafka` a 1-node Apache
Kafka 4.x (KRaft) from the pinned Maven jars (streams/brokers/kafka_local.py), or the cluster
named by KAFKA_BOOTSTRAP_SERVERS. Nothing is skipped: a broker that cannot start fails the tests.
"""

import os
from pathlib import Path

import pytest

from streams.brokers.kafka_local import KafkaCluster
from streams.brokers.tansu import EmbeddedBroker

BROKERS = ["tansu", "kafka"]
# The workers the tests start load mitiq, the noisy backends and the drift canary where they
# first need them, not in a warm-up thread at start (about 10 CPU s a start, and most of the
# suite's 75 worker starts never need them; a third of the suite's CPU on two cores). The
# integration tests' shared worker keeps the default, so one real worker warms up.
os.environ.setdefault("QLANE_WARM_UPS", "false")
TESTS = Path(__file__).resolve().parent


def start_kafka(tmp_path_factory) -> KafkaCluster:
    data = tmp_path_factory.mktemp("kafka")
    return KafkaCluster(nodes_count=1, data_dir=data).start()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """`make test` runs two pytest-xdist processes (`-n 2 --dist loadgroup`): each top folder
    of tests/ is one group, run whole by one process in its usual order, so a folder's
    package- and module-scoped workers start once and the session's brokers once per process
    (per-test distribution would start them in both). The reliability folder takes about as
    long as the others together."""
    for item in items:
        folder = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        item.add_marker(pytest.mark.xdist_group(folder))


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
