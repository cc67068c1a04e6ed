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
