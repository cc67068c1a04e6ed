"""A 1-node Apache Kafka with a SASL_SSL (SCRAM-SHA-512) listener and ACLs, for the security
and tenancy tests (streams/brokers/kafka_security.py). Not a fixture module: each test module starts
its own cluster with `secured_kafka(...)` and stops it when its tests end."""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

from streams.brokers.kafka_local import KafkaCluster
from streams.brokers.kafka_security import SecuredCluster, enable_sasl_ssl, new_password
from streams.settings import Settings


@contextlib.contextmanager
def secured_kafka(data_dir: Path, users: list[str]):
    """Yield a started SecuredCluster whose SCRAM users are `users` (+ admin)."""
    cluster = KafkaCluster(nodes_count=1, data_dir=data_dir)
    secured = enable_sasl_ssl(cluster, users={name: new_password() for name in users})
    cluster.start()
    try:
        yield secured
    finally:
        cluster.stop()


def user_settings(secured: SecuredCluster, user: str, base: Settings,
                  password: str | None = None) -> Settings:
    """`base` (prefix, app id, partitions) connecting as `user` over SASL_SSL."""
    fields = {**base.model_dump(), **secured.client_settings(user, password)}
    return Settings(**fields)


def operator_settings(secured: SecuredCluster, base: Settings) -> Settings:
    """`base` on the PLAINTEXT listener, whose ANONYMOUS principal is a super user."""
    return Settings(**{**base.model_dump(), "broker": secured.cluster.bootstrap,
                       "security_protocol": "PLAINTEXT"})


def base_settings(tag: str, **overrides) -> Settings:
    run = uuid.uuid4().hex[:8]
    return Settings(broker="127.0.0.1:1", profile="kafka", topic_prefix=f"{tag}{run}.qlane",
                    app_id=f"qlane-{tag}-{run}", **{"partitions": 2, **overrides})


def security_env(settings: Settings) -> dict[str, str]:
    """The QLANE_* environment that gives a worker process these connection settings."""
    return {
        "QLANE_SECURITY_PROTOCOL": settings.security_protocol,
        "QLANE_SSL_CAFILE": settings.ssl_cafile or "",
        "QLANE_SASL_MECHANISM": settings.sasl_mechanism,
        "QLANE_SASL_USERNAME": settings.sasl_username or "",
        "QLANE_SASL_PASSWORD": settings.sasl_password or "",
    }
