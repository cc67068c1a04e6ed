"""One broker per test session: the embedded Tansu, or KAFKA_BOOTSTRAP_SERVERS."""

import os

import pytest

from streams.broker import EmbeddedBroker


@pytest.fixture(scope="session")
def broker_address(tmp_path_factory):
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        yield external, "kafka"
        return
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap, "embedded"
