"""The worker's ACLs cover its own deployment and not a neighbour whose prefix starts with its
app id followed by `-` (a red-team run: `prod`'s grants covered `prod-eu`'s topics)."""

from __future__ import annotations

from streams.kafka.tenants import Acl, worker_acls
from streams.kafka.topics import TopicNames, changelog_topic, leader_topic
from streams.settings import Settings


def covered_topics(acls: list[Acl], topics: list[str]) -> set[str]:
    def covers(acl: Acl, name: str) -> bool:
        if acl.resource != "topic":
            return False
        return name.startswith(acl.name) if acl.pattern == "prefixed" else name == acl.name

    return {name for name in topics if any(covers(acl, name) for acl in acls)}


def deployment_topics(settings: Settings) -> list[str]:
    return [*TopicNames.from_settings(settings).all(), changelog_topic(settings),
            leader_topic(settings)]


def test_a_worker_may_use_every_topic_of_its_deployment() -> None:
    own = Settings(broker="127.0.0.1:1", topic_prefix="prod")
    topics = deployment_topics(own)
    assert covered_topics(worker_acls(own, "User:prod"), topics) == set(topics)


def test_a_worker_may_not_use_the_topics_of_prod_eu() -> None:
    own = Settings(broker="127.0.0.1:1", topic_prefix="prod")
    neighbour = Settings(broker="127.0.0.1:1", topic_prefix="prod-eu")
    assert covered_topics(worker_acls(own, "User:prod"), deployment_topics(neighbour)) == set()


def test_tenant_add_tries_again_while_the_cluster_cannot_answer(monkeypatch, capsys) -> None:
    """Asked of a node lost seconds before, `tenant add` exited 1 after creating the topics
    and some ACLs (a red-team run); adding a tenant is idempotent, so it is tried again."""
    import json
    from types import SimpleNamespace

    from aiokafka.errors import NodeNotReadyError

    from streams.kafka import tenants

    calls = []

    async def flaky(settings, name, principal):
        calls.append(name)
        if len(calls) < 3:
            raise NodeNotReadyError("node 3 is not ready")
        return {"tenant": name, "principal": principal}

    monkeypatch.setattr(tenants, "add_tenant", flaky)
    settings = Settings(broker="kafka-1:9092", retry_backoff_s=0.01, retry_backoff_max_s=0.02)
    args = SimpleNamespace(action="add", name="acme", principal="User:acme")
    assert tenants.run_tenant_command(settings, args) == 0
    assert calls == ["acme"] * 3
    assert json.loads(capsys.readouterr().out)["tenant"] == "acme"
