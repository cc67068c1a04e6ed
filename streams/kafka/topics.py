"""Topic names and their explicit creation (never rely on broker auto-creation)."""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from streams.kafka.security import kafka_options
from streams.settings import Settings
from workers.errors import BrokersMissing

log = logging.getLogger("qlane")

WORKFLOW_TABLE = "workflows"

# --- topic naming, decided once for the whole project (README "Topics, tenants and lanes") ---
# Job topics:       {prefix}.jobs[.{tenant}][-{lane}]   e.g. qlane.jobs, qlane.jobs-high,
#                                                          qlane.jobs.acme, qlane.jobs.acme-low
# Tenant reads:     {prefix}.results.{tenant}, {prefix}.status.{tenant}, {prefix}.cost.{tenant}
# Stage lanes:      {prefix}.stage.execute[-{lane}]
# These functions are pure (no Kafka, no settings object) so ACL tooling can use them.
TENANT_RE = re.compile(r"[a-z0-9_]{1,64}")
LANES = ("high", "normal", "low")  # drain order: higher lanes first
NORMAL = "normal"
TENANT_READ_KINDS = ("results", "status", "cost")


def raw_topic(app, *names: str, partitions: int):
    """A Faust topic (a channel, over several names) of raw key and value bytes."""
    return app.topic(*names, key_type=bytes, value_type=bytes, key_serializer="raw",
                     value_serializer="raw", partitions=partitions)


def check_tenant(tenant: str) -> str:
    if not isinstance(tenant, str) or not TENANT_RE.fullmatch(tenant):
        raise ValueError(f"tenant {tenant!r} must match [a-z0-9_]{{1,64}}")
    return tenant


def check_lane(lane: str) -> str:
    if lane not in LANES:
        raise ValueError(f"lane {lane!r} must be one of {', '.join(LANES)}")
    return lane


def lane_suffix(lane: str) -> str:
    return "" if check_lane(lane) == NORMAL else f"-{lane}"


def job_topic(prefix: str, tenant: str | None = None, lane: str = NORMAL) -> str:
    """`{prefix}.jobs[.{tenant}][-{lane}]`; no tenant is the shared topic, normal no suffix."""
    base = f"{prefix}.jobs" if tenant is None else f"{prefix}.jobs.{check_tenant(tenant)}"
    return base + lane_suffix(lane)


@functools.lru_cache(maxsize=256)
def job_topic_pattern(prefix: str, lane: str | None = None) -> re.Pattern:
    """The regex that matches every job topic of a prefix (of one lane, when given)."""
    if lane is None:
        tail = "(?:-(?:high|low))?"
    else:
        tail = re.escape(lane_suffix(lane))
    return re.compile(rf"^{re.escape(prefix)}\.jobs(?:\.[a-z0-9_]{{1,64}})?{tail}$")


@functools.lru_cache(maxsize=1024)  # every record of a job topic asks it (tenant, lane)
def parse_job_topic(prefix: str, topic: str) -> tuple[str | None, str] | None:
    """(tenant or None, lane) of a job topic name; None when it is not one."""
    if not job_topic_pattern(prefix).fullmatch(topic):
        return None
    rest = topic[len(prefix) + len(".jobs"):]
    lane = NORMAL
    for candidate in ("high", "low"):
        if rest.endswith(f"-{candidate}"):
            lane, rest = candidate, rest[: -len(candidate) - 1]
    tenant = rest[1:] if rest.startswith(".") else None
    return tenant, lane


def tenant_topic(prefix: str, kind: str, tenant: str) -> str:
    """`{prefix}.{results|status|cost}.{tenant}`: the topics a tenant's consumers read."""
    if kind not in TENANT_READ_KINDS:
        raise ValueError(f"kind {kind!r} must be one of {', '.join(TENANT_READ_KINDS)}")
    return f"{prefix}.{kind}.{check_tenant(tenant)}"


def execute_topic(prefix: str, lane: str = NORMAL) -> str:
    return f"{prefix}.stage.execute{lane_suffix(lane)}"


def lane_for_priority(priority: int) -> str:
    """JobRequest.priority > 0 is the high lane, < 0 the low lane, 0 the normal one."""
    if priority > 0:
        return "high"
    return "low" if priority < 0 else NORMAL


def job_topics(prefix: str, tenants: tuple[str, ...] | list[str] = ()) -> dict[str, list[str]]:
    """Lane -> the job topics of that lane: the shared one, then one per tenant."""
    return {
        lane: [job_topic(prefix, None, lane)] + [job_topic(prefix, t, lane) for t in tenants]
        for lane in LANES
    }


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
    jobs_high: str = ""
    jobs_low: str = ""
    execute_high: str = ""
    execute_low: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> TopicNames:
        prefix = settings.topic_prefix
        return cls(
            jobs_high=job_topic(prefix, None, "high"),
            jobs_low=job_topic(prefix, None, "low"),
            execute_high=execute_topic(prefix, "high"),
            execute_low=execute_topic(prefix, "low"),
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


def leader_topic(settings: Settings) -> str:
    """Faust's leader-election topic (its LeaderAssignor's name for it)."""
    return f"{settings.app_id}-__assignor-__leader"


class PartitionCountMismatch(RuntimeError):
    """An existing topic's partition count breaks co-partitioning by workflow_id."""


class TopicsNotCreated(RuntimeError):
    """The broker refused to create some of qlane's topics (e.g. a name past Kafka's 249
    characters): a worker that went on would read topics that do not exist."""


# Another worker created it between our listing and our request: it exists, as wanted.
TOPIC_ALREADY_EXISTS = 36
# Not allowed to create it: the access checks that follow say which ACL a principal lacks.
TOPIC_AUTHORIZATION_FAILED, CLUSTER_AUTHORIZATION_FAILED = 29, 31
LEFT_TO_OTHER_CHECKS = {TOPIC_ALREADY_EXISTS, TOPIC_AUTHORIZATION_FAILED,
                        CLUSTER_AUTHORIZATION_FAILED}


def check_created(response) -> None:
    """TopicsNotCreated naming each topic a CreateTopics response refused (but for a topic
    that exists, or one the principal may not create: the ACL checks name those)."""
    refused = [(name, code, (rest or [None])[0]) for name, code, *rest in response.topic_errors
               if code and code not in LEFT_TO_OTHER_CHECKS]
    if refused:
        from aiokafka.errors import for_code

        raise TopicsNotCreated("the broker refused to create " + "; ".join(
            f"{name} ({for_code(code).__name__}{': ' + message if message else ''})"
            for name, code, message in refused))


def topic_configs(settings: Settings, name: str) -> dict[str, str]:
    """Broker configs a qlane topic is created with: min.insync.replicas when set (never
    above the replication factor), compaction for the table changelog, and the broker's
    time for job records."""
    configs = {}
    min_isr = getattr(settings, "min_insync_replicas", None)
    if min_isr is not None:
        configs["min.insync.replicas"] = str(min(min_isr, settings.replication_factor or 1))
    if name == changelog_topic(settings):
        configs["cleanup.policy"] = "compact"
    if parse_job_topic(settings.topic_prefix, name) is not None:
        # Retention counts from a record's timestamp: a job its producer stamped days ago
        # (or 1970) was deleted within minutes, before a worker read it (a red-team run).
        # The broker stamps job records when it appends them; submitted_at_ms keeps the
        # client's time.
        configs["message.timestamp.type"] = "LogAppendTime"
    return configs


# The replication factor qlane gives its topics when none is set: the cluster's brokers, up
# to this (Kafka's own default.replication.factor is 1, and CreateTopics v3, the newest
# aiokafka sends, cannot ask for the broker's default).
DEFAULT_MAX_REPLICATION = 3


async def replicas_named(admin, topics: list[str]) -> set[int]:
    """The brokers named as replicas of `topics`, including those that are down."""
    named: set[int] = set()
    if topics:
        for description in await admin.describe_topics(topics):
            for partition in description["partitions"]:
                named.update(partition["replicas"])
    return named


def replica_witnesses(settings: Settings, existing) -> list[str]:
    """Existing topics whose replicas name the cluster's brokers: the prefix's shared ones
    (not every tenant's) and Kafka's internal ones."""
    shared = set(TopicNames.from_settings(settings).all())
    return sorted(name for name in existing if name in shared
                  or name in ("__consumer_offsets", "__transaction_state"))


async def settle_replication_factor(settings: Settings, admin, existing=(),
                                    creating: bool = False) -> int:
    """QLANE_REPLICATION_FACTOR, else the cluster's broker count up to 3, kept in `settings`
    for the Faust app's own topics. The count includes brokers that are down (named as
    replicas of existing topics): counted from the live ones alone, a tenant added while one
    node of three was down got topics of 2 replicas, which stopped at the next node's loss
    while the other tenants' went on (a red-team run). `creating`: BrokersMissing rather
    than topics with fewer replicas than that."""
    live = {broker["node_id"] for broker in (await admin.describe_cluster())["brokers"]}
    known = None
    if settings.replication_factor is None:
        known = live | await replicas_named(admin, replica_witnesses(settings, existing))
        settings.replication_factor = max(1, min(DEFAULT_MAX_REPLICATION, len(known)))
    if creating and len(live) < settings.replication_factor:
        if known is None:
            known = live | await replicas_named(admin, replica_witnesses(settings, existing))
        raise BrokersMissing(
            f"{len(live)} of the cluster's brokers answer (down: "
            f"{sorted(known - live) or 'unknown'}), and new topics need "
            f"{settings.replication_factor} replicas: nothing was created; try again when "
            "the brokers are back (or set QLANE_REPLICATION_FACTOR)")
    return settings.replication_factor


def warn_under_replicated(settings: Settings, descriptions) -> None:
    """Topics that exist with fewer replicas than qlane would create them with: a worker
    used them without a word (RF 1 topics on a 3-node cluster stopped with one node)."""
    low = {}
    for description in descriptions:
        replicas = min((len(p["replicas"]) for p in description["partitions"]), default=0)
        if replicas < (settings.replication_factor or 1):
            low[description["topic"]] = replicas
    if low:
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(low.items()))
        log.warning("topics with fewer replicas than the %d qlane creates topics with; each "
                    "stops when a broker holding it is lost, until its replicas are raised "
                    "(kafka-reassign-partitions): %s", settings.replication_factor, listed)


def qlane_topics(settings: Settings) -> list[str]:
    """Every topic a worker of these settings reads or writes (the tenants' included)."""
    wanted = TopicNames.from_settings(settings).all() + [changelog_topic(settings)]
    tenants = tuple(getattr(settings, "tenants", ()))
    for topics in job_topics(settings.topic_prefix, tenants).values():
        wanted += [topic for topic in topics if topic not in wanted]
    wanted += [tenant_topic(settings.topic_prefix, kind, tenant)
               for tenant in tenants for kind in TENANT_READ_KINDS]
    return list(dict.fromkeys(wanted))


async def ensure_topics(settings: Settings) -> list[str]:
    """Create every qlane topic that is missing; return the names created."""
    wanted = qlane_topics(settings)
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        from streams.kafka.topic_checks import check_former_app_id

        # The shared job topics tell: every worker subscribes to them (one fetch of the
        # committed offsets per partition, whatever the number of tenants).
        await check_former_app_id(
            settings, [topic for topics in job_topics(settings.topic_prefix, ()).values()
                       for topic in topics if topic in existing])
        wanted = list(dict.fromkeys(wanted))
        missing = [name for name in wanted if name not in existing]
        replication = await settle_replication_factor(settings, admin, existing,
                                                      creating=bool(missing))
        if missing:
            check_created(await admin.create_topics(
                [NewTopic(name, settings.partitions, replication,
                          topic_configs=topic_configs(settings, name)) for name in missing]
            ))
        present = [name for name in wanted if name in existing]
        if present:
            descriptions = await admin.describe_topics(present)
            warn_under_replicated(settings, descriptions)
            for description in descriptions:
                count = len(description["partitions"])
                if count != settings.partitions:
                    raise PartitionCountMismatch(
                        f"topic {description['topic']} has {count} partitions, "
                        f"qlane is configured for {settings.partitions}"
                    )
        from streams.kafka.topic_checks import (
            check_changelog_layout,
            check_changelog_policy,
            warn_producer_timestamps,
        )

        await warn_producer_timestamps(
            settings, admin,
            [name for name in present if parse_job_topic(settings.topic_prefix, name)])
        changelog = changelog_topic(settings)
        if changelog in present:
            await check_changelog_policy(settings, admin, changelog)
            await check_changelog_layout(settings, changelog)
        return missing
    finally:
        await admin.close()
