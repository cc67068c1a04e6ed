"""The worker's ACLs cover its own deployment and not a neighbour whose prefix starts with its
app id followed by `-` (a red-team run: `prod`'s grants covered `prod-eu`'s topics)."""

from __future__ import annotations

import pytest

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


def test_a_tenants_topics_are_not_deleted_while_a_worker_reads_them(monkeypatch):
    """Deleted under a running worker, a tenant's topics stopped it for every tenant for
    104 s, then it exited on a transaction it could not commit (a red-team run)."""
    import asyncio

    import streams.kafka.topic_checks as topic_checks
    from streams.kafka.tenants import remove_tenant
    from streams.settings import Settings

    settings = Settings(topic_prefix="qlane", profile="kafka", broker="k:9092")
    read = [{"qlane.jobs", "qlane.jobs.acme", "qlane.jobs.acme-high", "qlane.stage.execute"}]

    async def subscriptions(_settings):
        return read

    monkeypatch.setattr(topic_checks, "member_subscriptions", subscriptions)
    with pytest.raises(ValueError, match="1 worker.* still read 'acme'.*--force"):
        asyncio.run(remove_tenant(settings, "acme", "User:acme", delete_topics=True))
    deleted = []

    class Admin:
        def __init__(self, _settings):
            self.client = self

        async def __aenter__(self):
            return self

        async def __aexit__(self, *_exc):
            return None

        async def delete_acls(self, _acls):
            return 0

        async def list_topics(self):
            return ["qlane.jobs.acme", "qlane.results.acme"]

        async def delete_topics(self, names):
            deleted.extend(names)

    import streams.kafka.tenants as tenants

    monkeypatch.setattr(tenants, "Admin", Admin)
    forced = asyncio.run(remove_tenant(settings, "acme", "User:acme", delete_topics=True,
                                       force=True))
    assert forced["deleted_topics"] == deleted == ["qlane.jobs.acme", "qlane.results.acme"]
    read[0] = {"qlane.jobs", "qlane.stage.execute"}  # restarted without acme: its turn
    asyncio.run(remove_tenant(settings, "acme", "User:acme", delete_topics=True))
    assert len(deleted) == 4
