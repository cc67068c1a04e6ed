"""Start-up checks of streams/kafka/topic_checks.py against a cluster that answers badly:
a node lost or a group rebalancing is retried (preflight), never taken for a pass."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from aiokafka.errors import NodeNotReadyError, TopicAuthorizationFailedError

from streams.kafka import topic_checks
from streams.kafka.security import broker_unavailable
from streams.kafka.topic_checks import (
    GroupRebalancing,
    TopicLayoutMismatch,
    check_changelog_policy,
    check_group_tenants,
)
from streams.settings import Settings

KAFKA = Settings(profile="kafka", topic_prefix="t.qlane", broker="k1:9092")


class ConfigsAdmin:
    def __init__(self, answer) -> None:
        self.answer = answer

    async def describe_configs(self, resources):
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def policy_answer(policy: str, error_code: int = 0):
    topic = "t.qlane-workflows-changelog"
    return [SimpleNamespace(resources=[(error_code, None, 2, topic,
                                        [("cleanup.policy", policy)])])]


def check_policy(admin) -> None:
    asyncio.run(check_changelog_policy(KAFKA, admin, "t.qlane-workflows-changelog"))


def test_a_lost_node_is_not_a_pass_of_the_cleanup_policy():
    """aiokafka asks a random node; the one just lost answered NodeNotReadyError and the
    check went on: a changelog that is not compacted was accepted 3 times in 4."""
    with pytest.raises(NodeNotReadyError) as raised:
        check_policy(ConfigsAdmin(NodeNotReadyError("node 1")))
    assert broker_unavailable(raised.value)  # preflight tries again
    with pytest.raises(TopicLayoutMismatch):
        check_policy(ConfigsAdmin(policy_answer("delete")))
    check_policy(ConfigsAdmin(policy_answer("compact")))


def test_a_retriable_error_code_for_the_topic_is_retried_a_refusal_is_not():
    with pytest.raises(Exception) as raised:
        check_policy(ConfigsAdmin(policy_answer("", error_code=7)))  # REQUEST_TIMED_OUT
    assert broker_unavailable(raised.value)



def test_a_worker_refused_the_cleanup_policy_stops_with_the_reason():
    """A refusal was a warning and the worker started: with the README's worker ACLs no
    secured deployment ever checked its changelog (a red-team run)."""
    from streams.kafka.security import AccessRefused

    with pytest.raises(AccessRefused, match="DESCRIBE_CONFIGS"):
        check_policy(ConfigsAdmin(policy_answer("", error_code=29)))
    with pytest.raises(AccessRefused, match="DESCRIBE_CONFIGS"):
        check_policy(ConfigsAdmin(TopicAuthorizationFailedError("t.qlane-workflows-changelog")))


def describe_answer(state: str, members: list[bytes], error_code: int = 0):
    group = {"error_code": error_code, "group_id": "t.qlane", "state": state,
             "members": [{"member_id": f"m{i}", "member_metadata": metadata}
                         for i, metadata in enumerate(members)]}
    return [SimpleNamespace(to_object=lambda: {"groups": [group]})]


def group_admin(monkeypatch, answer) -> None:
    class Admin:
        def __init__(self, **options) -> None:
            pass

        async def start(self) -> None:
            pass

        async def close(self) -> None:
            pass

        async def describe_consumer_groups(self, groups):
            return answer

    monkeypatch.setattr(topic_checks, "AIOKafkaAdminClient", Admin)


def subscription(*topics: str) -> bytes:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberMetadata

    return ConsumerProtocolMemberMetadata(0, list(topics), b"").encode()


def test_a_rebalancing_group_is_retried_not_passed(monkeypatch):
    """During a rebalance Kafka lists the members with empty metadata; that decoded to an
    error, read as "not described", and a worker with another tenant list started (a
    worker joining is what starts a rebalance)."""
    group_admin(monkeypatch, describe_answer("PreparingRebalance", [b"", b""]))
    with pytest.raises(GroupRebalancing) as raised:
        asyncio.run(check_group_tenants(KAFKA))
    assert broker_unavailable(raised.value)


def test_a_group_whose_coordinator_is_loading_is_retried(monkeypatch):
    group_admin(monkeypatch, describe_answer("", [], error_code=14))  # LOAD_IN_PROGRESS
    with pytest.raises(Exception) as raised:
        asyncio.run(check_group_tenants(KAFKA))
    assert broker_unavailable(raised.value)


def test_a_stable_group_with_other_job_topics_is_refused(monkeypatch):
    group_admin(monkeypatch, describe_answer(
        "Stable", [subscription("t.qlane.jobs", "t.qlane.jobs.acme", "t.qlane.jobs-high")]))
    with pytest.raises(TopicLayoutMismatch):
        asyncio.run(check_group_tenants(KAFKA))


def test_job_topics_that_keep_producer_timestamps_are_named(caplog):
    """An upgraded deployment's job topics kept CreateTime without a word (a red-team run)."""
    answer = [SimpleNamespace(resources=[
        (0, None, 2, "t.qlane.jobs", [("message.timestamp.type", "CreateTime")]),
        (0, None, 2, "t.qlane.jobs-high", [("message.timestamp.type", "LogAppendTime")]),
        (29, None, 2, "t.qlane.jobs-low", []),
    ])]
    topics = ["t.qlane.jobs", "t.qlane.jobs-high", "t.qlane.jobs-low"]
    with caplog.at_level(logging.WARNING, logger="qlane"):
        asyncio.run(topic_checks.warn_producer_timestamps(KAFKA, ConfigsAdmin(answer), topics))
    assert "for each of: t.qlane.jobs" in caplog.text
    assert "jobs-high" not in caplog.text and "jobs-low" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qlane"):  # no DESCRIBE_CONFIGS: not needed
        asyncio.run(topic_checks.warn_producer_timestamps(
            KAFKA, ConfigsAdmin(TopicAuthorizationFailedError("t.qlane.jobs")), topics))
    assert caplog.text == ""


def test_records_that_are_no_table_entry_do_not_count_towards_a_misplaced_changelog():
    """8 forged tombstones on other partitions than their keys' made every worker of a young
    deployment refuse to start, at every start (a red-team run on the embedded broker)."""
    import json

    from streams.kafka.partitioning import key_partition
    from streams.kafka.topic_checks import misplaced_share

    ids = [f"wf-forged-{i}" for i in range(8)]
    elsewhere = [(key_partition(i.encode(), 4) + 1) % 4 for i in ids]
    keys = [json.dumps(i).encode() for i in ids]
    junk = [None, b"[" * 10_000, b'"a string"', b"[1, 2]", b'{"no": "state"}', b"\xff",
            b'{"state": 3}', b"null"]
    assert misplaced_share(list(zip(elsewhere, keys, junk, strict=True)), 4) == (0, 0)
    entries = [json.dumps({"state": "done"}).encode()] * 8
    assert misplaced_share(list(zip(elsewhere, keys, entries, strict=True)), 4) == (8, 8)


def test_a_worker_refused_a_topics_record_limit_stops_with_the_reason(monkeypatch):
    """With the worker ACLs of 0.3.0 (describe_configs on the changelog only) every other
    topic answered TopicAuthorizationFailed and was skipped unsaid: a results topic limited to
    150,000 bytes then refused a 256 KB result, and the worker stopped at that job at every
    start (a red-team run on Kafka 3.9)."""
    from streams.kafka.security import AccessRefused

    def answer(*errors: int):
        return [SimpleNamespace(resources=[
            (error, None, 2, f"t.qlane.topic{i}", [("max.message.bytes", "150000")])
            for i, error in enumerate(errors)])]

    class Admin(ConfigsAdmin):
        def __init__(self, **_) -> None:
            super().__init__(answers.pop(0))

        async def start(self) -> None:
            pass

        async def close(self) -> None:
            pass

    monkeypatch.setattr(topic_checks, "AIOKafkaAdminClient", Admin)
    topics = ["t.qlane.topic0", "t.qlane.topic1"]
    answers = [answer(0, 29), answer(0, 0)]
    with pytest.raises(AccessRefused, match=r"max.message.bytes of t.qlane.topic1 "
                                            r"\(DESCRIBE_CONFIGS on the prefix t.qlane."):
        asyncio.run(topic_checks.written_record_limit(KAFKA, topics))
    assert asyncio.run(topic_checks.written_record_limit(KAFKA, topics)) == (
        150000 - topic_checks.RECORD_BATCH_OVERHEAD_BYTES, "t.qlane.topic0")
