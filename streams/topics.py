"""Topic names and their explicit creation (never rely on broker auto-creation)."""

from __future__ import annotations

from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.security import kafka_options
from streams.settings import Settings

WORKFLOW_TABLE = "workflows"


@dataclass(frozen=True)
class TopicNames:
    jobs: str
    execute: str
    mitigate: str
    variational: str
    results: str
    cost: str
    drift: str
    status: str
    deadletter: str
    control: str

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicNames:
        return cls(
            jobs=settings.topic("jobs"),
            execute=settings.topic("stage.execute"),
            mitigate=settings.topic("stage.mitigate"),
            variational=settings.topic("stage.variational"),
            results=settings.topic("results"),
            cost=settings.topic("cost"),
            drift=settings.topic("drift"),
            status=settings.topic("status"),
            deadletter=settings.topic("deadletter"),
            control=settings.topic("control"),
        )

    def all(self) -> list[str]:
        return list(vars(self).values())

    def by_short_name(self, name: str) -> str:
        """`results`, `qlane.results` and `stage.execute` all name the same topic."""
        for field_name, topic in vars(self).items():
            if name in (field_name, topic, topic.split(".", 1)[-1]):
                return topic
        return name


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}-{WORKFLOW_TABLE}-changelog"


class PartitionCountMismatch(RuntimeError):
    """An existing topic's partition count breaks co-partitioning by workflow_id."""


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every qlane topic that is missing; return the names created."""
    wanted = TopicNames.from_settings(settings).all() + [changelog_topic(settings)]
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            replication = settings.replication_factor
            await admin.create_topics(
                [NewTopic(name, settings.partitions, replication) for name in missing]
            )
        present = [name for name in wanted if name in existing]
        if present:
            for description in await admin.describe_topics(present):
                count = len(description["partitions"])
                if count != settings.partitions:
                    raise PartitionCountMismatch(
                        f"topic {description['topic']} has {count} partitions, "
                        f"qlane is configured for {settings.partitions}"
                    )
        return missing
    finally:
        await admin.close()
