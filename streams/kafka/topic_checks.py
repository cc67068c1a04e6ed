"""Checks of existing topics that a partition count alone does not show.

`ensure_topics` refuses a topic whose partition count differs from the setting. Two ways an
operator can still break idempotency pass that (red-team run, 2026-12-05, Apache Kafka 4.1):

* every topic grown from 2 to 4 partitions, workers restarted with `--partitions 4`: each
  workflow id now hashes to another partition than the one its table entry is on, and 15 of
  30 jobs sent again ran and were charged a second time;
* the table's changelog created beforehand with `cleanup.policy=delete`: after its retention
  the table forgot every workflow, and 20 of 20 jobs sent again ran and were charged again.

A third: the default app id (the consumer group, the changelog's name, the transactional ids)
was `qlane` before 2026-12-05 and is the topic prefix since. A deployment with its own prefix
upgraded without QLANE_APP_ID started a new group from the earliest offsets with an empty
table, and every job still on its topics ran and was charged again (3 of 3, red-team run).

So a worker also samples the changelog (its records must sit on their workflow id's
partition) and, where the broker answers DescribeConfigs (Apache Kafka; Tansu has no
compaction to ask about), reads the changelog's cleanup policy.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import (
    KafkaError,
    KafkaTimeoutError,
    TopicAuthorizationFailedError,
    for_code,
)

from streams.kafka.compat import assign_settled, stop_consumer, topic_partitions
from streams.kafka.partitioning import key_partition
from streams.kafka.security import AccessRefused, broker_unavailable, kafka_options
from streams.settings import Settings
from streams.workflow.control_records import decoded

log = logging.getLogger("qlane")

SAMPLE_PER_PARTITION = 64
SAMPLE_TIMEOUT_S = 10.0
# Refused from this share of misplaced keys among at least MIN_SAMPLED: growing n to m
# partitions misplaces 1 - n/m of them (half, from 2 to 4), and a few forged records on the
# embedded broker (which has no ACLs) must not keep every worker from starting.
MISPLACED_SHARE = 0.25
MIN_SAMPLED = 8
KEY_SEPARATOR = "\x1f"  # a table key beyond the workflow id (streams/agents/variational.py)


FORMER_DEFAULT_APP_ID = "qlane"


async def check_group_tenants(settings: Settings) -> None:
    """TopicLayoutMismatch when a worker already in the group subscribes to other job topics
    (another QLANE_TENANTS). Exactly-once only: Faust names transactional ids
    `{app id}-{topic group}-{partition}`, and with different subscriptions the topic groups
    differ, so two workers used one id: the last to join fenced the other, which stopped
    (ProducerFenced, 3 of 3 times with 51 and 50 tenants; a red-team run). A group that
    cannot be described (Tansu, no Describe right) is not checked."""
    from streams.kafka.topics import job_topics, parse_job_topic

    if settings.effective_processing_guarantee != "exactly_once":
        return
    prefix = settings.topic_prefix
    ours = {topic for topics in job_topics(prefix, tuple(settings.tenants)).values()
            for topic in topics}
    for subscription in await member_subscriptions(settings) or []:
        theirs = {topic for topic in subscription if parse_job_topic(prefix, topic)}
        if theirs and theirs != ours:
            missing, extra = sorted(ours - theirs)[:5], sorted(theirs - ours)[:5]
            raise TopicLayoutMismatch(
                f"a worker of group {settings.app_id} reads other job topics (another "
                f"QLANE_TENANTS: it lacks {missing}, has {extra} besides): on exactly-once, "
                "workers with different tenant lists fence each other's transactions. Stop "
                "every worker and start them with one list (a worker stopped within the last "
                "few seconds may still be listed: start again shortly)."
            )


async def member_subscriptions(settings: Settings) -> list[set[str]] | None:
    """The topics each member of the workers' group subscribes to; None when the group
    cannot be described (Tansu, no Describe right); GroupRebalancing while it rebalances
    (its members' subscriptions are empty until it settles)."""
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        answers = await admin.describe_consumer_groups([settings.app_id])
        groups = [group for answer in answers for group in answer.to_object()["groups"]]
    except KafkaError as error:
        if broker_unavailable(error):
            raise
        log.debug("group %s not described: %r", settings.app_id, error)
        return None
    finally:
        await admin.close()
    subscriptions = []
    for group in groups:
        if group["error_code"]:  # retriable: its coordinator loading or moving
            raise_if_retriable(group["error_code"], f"group {settings.app_id}")
            log.debug("group %s not described: %s", settings.app_id,
                      for_code(group["error_code"]).__name__)
            return None
        if group["state"] in REBALANCING:
            # A worker joining starts a rebalance: two workers with other tenant lists
            # starting together both passed the layout check (a red-team run).
            raise GroupRebalancing(f"group {settings.app_id} is {group['state']}")
        for member in group["members"]:
            try:
                subscriptions.append(set(ConsumerProtocolMemberMetadata.decode(
                    member["member_metadata"]).subscription))
            except (ValueError, TypeError) as error:  # not a consumer-protocol member
                log.debug("member %s of group %s not read: %r", member["member_id"],
                          settings.app_id, error)
    return subscriptions


REBALANCING = frozenset({"PreparingRebalance", "CompletingRebalance"})


def raise_if_retriable(error_code: int, what: str) -> None:
    """The error of a Kafka error code when it is retriable: the start-up checks try again
    rather than take an unanswered question for a pass."""
    error = for_code(error_code)
    if getattr(error, "retriable", False):
        raise error(what)


class GroupRebalancing(KafkaTimeoutError):
    """The group is rebalancing: its members' subscriptions are not known (retriable)."""


class TopicLayoutMismatch(RuntimeError):
    """An existing topic's layout or configuration would break idempotency."""


async def consumed_topics(settings: Settings, group: str, topics: list[str]) -> set[str]:
    """Those of `topics` (existing ones) on which `group` has committed offsets; none where
    the group cannot be asked (no Describe right on it). A consumer asks, not the admin
    client: aiokafka's admin cannot read Tansu's OffsetFetch answer."""
    consumer = AIOKafkaConsumer(**kafka_options(settings), group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    consumed = set()
    try:
        for topic in topics:
            for partition in await topic_partitions(consumer, topic):
                if await consumer.committed(TopicPartition(topic, partition)) is not None:
                    consumed.add(topic)
                    break
    except KafkaError as error:
        if broker_unavailable(error):
            raise  # unknown is not "none": the start-up checks try again
        log.debug("committed offsets of group %s unknown: %r", group, error)
    finally:
        await stop_consumer(consumer)
    return consumed


async def check_former_app_id(settings: Settings, job_topics: list[str]) -> None:
    """TopicLayoutMismatch if the app id is the new default, the former default's group has
    consumed this prefix's job topics and the new group has not: the upgrade would run every
    retained job again. An app id given explicitly (either one) is the operator's choice."""
    if not settings.app_id_defaulted or settings.app_id == FORMER_DEFAULT_APP_ID:
        return
    if not job_topics or not await consumed_topics(settings, FORMER_DEFAULT_APP_ID, job_topics):
        return
    if await consumed_topics(settings, settings.app_id, job_topics):
        return
    raise TopicLayoutMismatch(
        f"the job topics of prefix {settings.topic_prefix} were consumed by group "
        f"{FORMER_DEFAULT_APP_ID!r}, the default app id before 2026-12-05; the default is now "
        f"the prefix ({settings.app_id!r}), a new group with an empty table that would run "
        f"and charge every retained job again. Set QLANE_APP_ID={FORMER_DEFAULT_APP_ID} to "
        f"keep the group and the table, or QLANE_APP_ID={settings.app_id} to start afresh."
    )


def misplaced_share(sampled: list[tuple[int, bytes, bytes | None]],
                    partitions: int) -> tuple[int, int]:
    """(misplaced, counted) among changelog records as (partition, key, value) that are table
    entries: a tombstone or a value that is no entry (a JSON object with a `state`) stands
    for no workflow. Counted, 8 forged tombstones on other partitions than their keys' made
    every worker of a young deployment refuse to start (a red-team run on the embedded
    broker, where anyone writes the changelog)."""
    misplaced = counted = 0
    for partition, raw_key, raw_value in sampled:
        key, entry = decoded(raw_key, raw_value)  # (None, None) for a tombstone or junk
        if not isinstance(key, str) or not key:
            continue
        if not isinstance(entry, dict) or not isinstance(entry.get("state"), str):
            continue
        workflow_id = key.split(KEY_SEPARATOR, 1)[0].encode()
        counted += 1
        misplaced += key_partition(workflow_id, partitions) != partition
    return misplaced, counted


async def sample_changelog(settings: Settings,
                           topic: str) -> list[tuple[int, bytes, bytes | None]]:
    """Up to SAMPLE_PER_PARTITION records (partition, key, value) from the start of each
    partition of `topic`."""
    consumer = AIOKafkaConsumer(**kafka_options(settings), group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    sampled: list[tuple[int, bytes, bytes | None]] = []
    try:
        partitions = [TopicPartition(topic, p)
                      for p in sorted(await topic_partitions(consumer, topic))]
        if not partitions:
            return sampled
        await assign_settled(consumer, partitions)
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        wanted = {tp: min(ends[tp], starts[tp] + SAMPLE_PER_PARTITION) for tp in partitions
                  if ends[tp] > starts[tp]}
        for tp in partitions:
            consumer.seek(tp, starts[tp])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SAMPLE_TIMEOUT_S
        while wanted and loop.time() < deadline:
            batch = await consumer.getmany(*wanted, timeout_ms=500)
            for tp, records in batch.items():
                sampled += [(tp.partition, r.key, r.value) for r in records
                            if tp in wanted and r.offset < wanted[tp] and r.key]
            for tp in list(wanted):
                if await consumer.position(tp) >= wanted[tp]:
                    del wanted[tp]
    finally:
        await stop_consumer(consumer)
    return sampled


async def check_changelog_layout(settings: Settings, topic: str) -> None:
    misplaced, counted = misplaced_share(await sample_changelog(settings, topic),
                                         settings.partitions)
    if counted >= MIN_SAMPLED and misplaced >= MISPLACED_SHARE * counted:
        raise TopicLayoutMismatch(
            f"{misplaced} of {counted} sampled workflows of {topic} sit on another partition "
            f"than their id's with {settings.partitions} partitions: the topics were grown "
            "(or qlane ran with another partition count). Growing partitions moves workflow "
            "ids away from their table entries, and their jobs would run and be charged "
            "again: run with the count the table was written with, or start a new "
            "deployment (a new QLANE_TOPIC_PREFIX) for more partitions")


async def topic_config(admin: AIOKafkaAdminClient, topics: list[str],
                       config: str) -> dict[str, tuple[int, str | None]]:
    """Each topic's value of `config`, with the error code of its answer (0: answered), from
    one DescribeConfigs request."""
    responses = await admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, configs={config: None})
         for topic in topics])
    return {name: (error_code, {entry[0]: entry[1] for entry in entries}.get(config))
            for response in responses
            for error_code, _message, _kind, name, entries in response.resources}


async def warn_producer_timestamps(settings: Settings, admin: AIOKafkaAdminClient,
                                   topics: list[str]) -> None:
    """Name the job topics that keep their producers' timestamps (created by a release before
    job topics were created with LogAppendTime): retention deletes a job stamped long ago
    before a worker reads it, and an upgraded deployment kept CreateTime without a word (a
    red-team run). A warning only, and only where the worker may read topic configs."""
    if settings.profile != "kafka" or not topics:
        return
    try:
        answers = await topic_config(admin, topics, "message.timestamp.type")
    except Exception as error:  # noqa: BLE001 - e.g. no DESCRIBE_CONFIGS: not needed to run
        if broker_unavailable(error):
            raise
        log.debug("job topics' timestamp type not read: %s", type(error).__name__)
        return
    kept = sorted(name for name, (error_code, kind) in answers.items()
                  if not error_code and kind == "CreateTime")
    if kept:
        log.warning(
            "job topics keep their producers' timestamps, so retention can delete a job "
            "stamped long ago before it is read; qlane creates them with LogAppendTime: "
            "kafka-configs --alter --entity-type topics --entity-name TOPIC --add-config "
            "message.timestamp.type=LogAppendTime, for each of: %s", ", ".join(kept))


# What a record batch of one record adds to the record's own size (batch header, record
# framing, varints) and a margin: a broker's max.message.bytes bounds the whole batch.
RECORD_BATCH_OVERHEAD_BYTES = 512


async def written_record_limit(settings: Settings,
                               topics: list[str]) -> tuple[int, str] | None:
    """The largest record the broker takes on every one of `topics` (their smallest
    max.message.bytes, less the batch's overhead) and the topic that sets it, or None where
    it cannot be read (the embedded broker, no DESCRIBE_CONFIGS). A broker set below the
    worker's 1 MB refused a 286 KB result: it was lost, with its job `done` and charged, and
    the sequence errors after it lost the next jobs of its partition (a red-team run on
    Kafka 3.9)."""
    if settings.profile != "kafka" or not topics:
        return None
    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        answers = await topic_config(admin, topics, "max.message.bytes")
    except Exception as error:  # noqa: BLE001 - not needed to run: the setting stands
        if broker_unavailable(error):
            raise
        if isinstance(error, TopicAuthorizationFailedError):
            raise limit_refused(settings, topics) from None
        log.debug("topics' max.message.bytes not read: %s", type(error).__name__)
        return None
    finally:
        await admin.close()
    refused = sorted(name for name, (error_code, _) in answers.items()
                     if error_code == TopicAuthorizationFailedError.errno)
    if refused:
        raise limit_refused(settings, refused)
    limits = [(int(value), name) for name, (error_code, value) in answers.items()
              if not error_code and value is not None and str(value).isdigit()]
    if not limits:
        return None
    value, topic = min(limits)
    return value - RECORD_BATCH_OVERHEAD_BYTES, topic


def limit_refused(settings: Settings, topics: list[str]) -> AccessRefused:
    """The worker may not read the record limits of topics it writes. With the worker ACLs of
    0.3.0 (describe_configs on the changelog only) the check skipped every other topic
    unsaid: a tenant's results topic set to 150,000 bytes then refused a 256 KB result, and
    the worker stopped at that job at every start (a red-team run on Kafka 3.9)."""
    named = ", ".join(topics[:3]) + (f" and {len(topics) - 3} more" if len(topics) > 3 else "")
    return AccessRefused(
        f"{settings.sasl_username or 'this principal'} may not read max.message.bytes of "
        f"{named} (DESCRIBE_CONFIGS on the prefix {settings.topic_prefix}.; `qlane tenant "
        "grant-worker` grants it): a worker must know the largest record each topic it "
        "writes takes, or a result past it stops the worker at that job at every start")


def policy_refused(settings: Settings, topic: str) -> AccessRefused:
    """The worker may not read the changelog's cleanup policy: with the worker ACLs of
    before, every secured deployment started without the check (a red-team run)."""
    return AccessRefused(
        f"{settings.sasl_username or 'this principal'} may not read the cleanup policy of "
        f"{topic} (DESCRIBE_CONFIGS on it; `qlane tenant grant-worker` grants it): the "
        "workflow table's changelog must be compacted, or jobs sent again after its "
        "retention run and are charged again")


async def check_changelog_policy(settings: Settings, admin: AIOKafkaAdminClient,
                                 topic: str) -> None:
    """Refuse a changelog that is not compacted (Apache Kafka only)."""
    if settings.profile != "kafka":
        return  # Tansu answers DescribeConfigs by closing the connection; it never compacts
    try:
        answers = await topic_config(admin, [topic], "cleanup.policy")
    except Exception as error:
        if broker_unavailable(error):
            # A node just lost (aiokafka asks a random one): the start-up checks try again.
            # Going on accepted a changelog that is not compacted 3 times in 4 (a red-team
            # run).
            raise
        if isinstance(error, TopicAuthorizationFailedError):
            raise policy_refused(settings, topic) from None
        log.warning("could not read the cleanup policy of %s (%s): it must be compact",
                    topic, type(error).__name__)
        return
    if topic not in answers:
        return
    error_code, policy = answers[topic]
    if error_code:
        raise_if_retriable(error_code, f"cleanup policy of {topic}")
        if error_code == TopicAuthorizationFailedError.errno:
            raise policy_refused(settings, topic)
        log.warning("could not read the cleanup policy of %s (error %d): it must be compact",
                    topic, error_code)
        return
    policy = policy or ""
    if "compact" not in policy.split(","):
        raise TopicLayoutMismatch(
            f"{topic} has cleanup.policy={policy}: the workflow table's changelog must be "
            "compacted, or after its retention the table forgets every workflow and their "
            "jobs run and are charged again when sent again (kafka-configs --alter "
            f"--entity-type topics --entity-name {topic} --add-config cleanup.policy=compact)")
