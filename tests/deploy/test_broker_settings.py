"""docker-compose.yml and deploy/k8s run Kafka and qlane with the settings the tests run on.

The reference is the 3-node cluster of streams/brokers/kafka_local.py (the reliability tests'
broker): its replication, min.insync.replicas, transaction-log and group settings must be the
brokers' in docker-compose.yml and in the Strimzi manifest, the Kafka version the one the POM
pins, and the workers must create topics with that replication and run exactly-once.
"""

from __future__ import annotations

import pathlib
import re
from pathlib import Path

import pytest
import yaml

from streams.brokers.kafka_local import KafkaCluster, Node
from streams.settings import Settings

ROOT = pathlib.Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
POM = ROOT / "deploy" / "kafka" / "pom.xml"

# The broker settings that decide durability and delivery (test-only sizes such as the
# internal topics' partition counts and thread counts are left out on purpose).
CHECKED = (
    "default.replication.factor",
    "min.insync.replicas",
    "offsets.topic.replication.factor",
    "transaction.state.log.replication.factor",
    "transaction.state.log.min.isr",
    "share.coordinator.state.topic.replication.factor",
    "share.coordinator.state.topic.min.isr",
    "group.initial.rebalance.delay.ms",
    "group.min.session.timeout.ms",
    "auto.create.topics.enable",
)


@pytest.fixture(scope="module")
def tested() -> dict[str, str]:
    """The properties streams/brokers/kafka_local.py gives node 1 of its 3-node cluster."""
    cluster = KafkaCluster(nodes_count=3)
    folder = Path("/nonexistent")
    cluster.nodes = [Node(node_id=i, port=9090 + i, controller_port=9190 + i,
                          data_dir=folder / str(i), log_path=folder / f"{i}.log")
                     for i in (1, 2, 3)]
    properties = cluster.properties(cluster.nodes[0])
    assert set(CHECKED) <= set(properties)
    return properties


def pinned_kafka_version() -> str:
    """The kafka_2.13 version of the POM's default (activeByDefault) profile."""
    text = POM.read_text()
    default = text.split("<activeByDefault>true</activeByDefault>", 1)[1]
    match = re.search(r"<artifactId>kafka_2\.13</artifactId>\s*<version>([^<]+)</version>", default)
    return match.group(1)


def env_name(key: str) -> str:
    """The apache/kafka image's environment name of a server property."""
    return "KAFKA_" + key.upper().replace(".", "_")


def compose_services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def settings_of(env: dict) -> Settings:
    return Settings(**{k.removeprefix("QLANE_").lower(): v for k, v in env.items()})


def test_compose_brokers_use_the_tested_settings(tested):
    brokers = {name: s for name, s in compose_services().items()
               if str(s.get("image", "")).startswith("apache/kafka:")}
    assert len(brokers) == 3, "the tested cluster has 3 nodes"
    node_ids = set()
    for name, service in brokers.items():
        env = {k: str(v) for k, v in service["environment"].items()}
        for key in CHECKED:
            assert env.get(env_name(key)) == tested[key], f"{name}: {key}"
        assert env["KAFKA_PROCESS_ROLES"] == tested["process.roles"]
        assert len(env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")) == 3
        assert service["image"] == f"apache/kafka:{pinned_kafka_version()}"
        node_ids.add(env["KAFKA_NODE_ID"])
    assert len(node_ids) == 3


def test_compose_workers_replicate_and_run_exactly_once(tested):
    for name, service in compose_services().items():
        env = service.get("environment", {})
        if "QLANE_BROKER" not in env:
            continue
        settings = settings_of(env)
        assert len(settings.broker.split(",")) == 3, name
        assert settings.replication_factor == int(tested["default.replication.factor"]), name
        assert settings.min_insync_replicas == int(tested["min.insync.replicas"]), name
        assert settings.effective_processing_guarantee == "exactly_once", name


def test_k8s_workers_replicate_and_run_exactly_once(tested):
    config = yaml.safe_load((K8S / "configmap.yaml").read_text())["data"]
    settings = settings_of(config)
    assert settings.profile == "kafka"
    assert settings.replication_factor == int(tested["default.replication.factor"])
    assert settings.min_insync_replicas == int(tested["min.insync.replicas"])
    assert settings.effective_processing_guarantee == "exactly_once"


def test_k8s_kafka_cluster_uses_the_tested_settings(tested):
    documents = {d["kind"]: d for d in yaml.safe_load_all((K8S / "kafka-strimzi.yaml").read_text())}
    kafka = documents["Kafka"]["spec"]["kafka"]
    config = {k: str(v).lower() for k, v in kafka["config"].items()}
    for key in CHECKED:
        assert config.get(key) == tested[key], key
    assert kafka["version"] == pinned_kafka_version()
    pool = documents["KafkaNodePool"]["spec"]
    assert pool["replicas"] == 3
    assert set(pool["roles"]) == set(tested["process.roles"].split(","))
