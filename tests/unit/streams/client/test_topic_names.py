"""The project's topic naming (streams/kafka/topics.py) and the lane gate
(streams/workflow/lanes.py)."""

from __future__ import annotations

import asyncio

import pytest

from streams.kafka.topics import (
    LANES,
    execute_topic,
    job_topic,
    job_topic_pattern,
    job_topics,
    lane_for_priority,
    parse_job_topic,
    tenant_topic,
)
from streams.workflow.lanes import LaneGate


def test_job_topic_names():
    assert job_topic("qlane") == "qlane.jobs"
    assert job_topic("qlane", lane="high") == "qlane.jobs-high"
    assert job_topic("qlane", "acme") == "qlane.jobs.acme"
    assert job_topic("qlane", "acme", "low") == "qlane.jobs.acme-low"
    assert job_topic("it1.qlane", "a_1", "high") == "it1.qlane.jobs.a_1-high"
    assert tenant_topic("qlane", "results", "acme") == "qlane.results.acme"
    assert tenant_topic("qlane", "status", "acme") == "qlane.status.acme"
    assert tenant_topic("qlane", "cost", "acme") == "qlane.cost.acme"
    assert execute_topic("qlane", "low") == "qlane.stage.execute-low"


@pytest.mark.parametrize("bad", ["ACME", "a-b", "a.b", "", "x" * 65, "é"])
def test_tenant_names_are_checked(bad):
    with pytest.raises(ValueError):
        job_topic("qlane", bad)
    with pytest.raises(ValueError):
        tenant_topic("qlane", "results", bad)


def test_unknown_lane_and_kind_are_refused():
    with pytest.raises(ValueError):
        job_topic("qlane", lane="urgent")
    with pytest.raises(ValueError):
        tenant_topic("qlane", "jobs", "acme")


@pytest.mark.parametrize("tenant", [None, "acme", "high", "x" * 64])
@pytest.mark.parametrize("lane", LANES)
def test_names_round_trip_through_the_pattern(tenant, lane):
    name = job_topic("q.x", tenant, lane)
    assert parse_job_topic("q.x", name) == (tenant, lane)
    assert job_topic_pattern("q.x").fullmatch(name)
    assert job_topic_pattern("q.x", lane).fullmatch(name)
    for other in LANES:
        if other != lane:
            assert not job_topic_pattern("q.x", other).fullmatch(name)


@pytest.mark.parametrize("name", ["qlane.jobsx", "qlane.results", "qlane.jobs.", "qlane.jobs-mid",
                                  "qlane.jobs.a-b-high", "other.jobs", "qlanexjobs",
                                  "qlane.stage.execute"])
def test_other_topics_are_not_job_topics(name):
    assert parse_job_topic("qlane", name) is None


def test_lanes_per_priority_and_topic_lists():
    assert [lane_for_priority(p) for p in (5, 1, 0, -1, -7)] == [
        "high", "high", "normal", "low", "low"]
    assert job_topics("qlane", ["acme"]) == {
        "high": ["qlane.jobs-high", "qlane.jobs.acme-high"],
        "normal": ["qlane.jobs", "qlane.jobs.acme"],
        "low": ["qlane.jobs-low", "qlane.jobs.acme-low"],
    }


async def _drain(gate: LaneGate, arrivals: list[str]) -> list[str]:
    order = []

    async def one(lane: str, index: int):
        async with gate.turn(lane):
            order.append(f"{lane}{index}")
            await asyncio.sleep(0.001)

    await asyncio.gather(*(one(lane, i) for i, lane in enumerate(arrivals)))
    return order


def test_gate_runs_higher_lanes_first_one_at_a_time():
    gate = LaneGate(LANES, burst=100)
    order = asyncio.run(_drain(gate, ["low", "low", "normal", "high", "low", "high"]))
    assert [o.rstrip("0123456789") for o in order] == [
        "high", "high", "normal", "low", "low", "low"]


def test_gate_never_starves_a_lower_lane():
    gate = LaneGate(LANES, burst=3)
    order = asyncio.run(_drain(gate, ["high"] * 12 + ["low"] * 2))
    lanes = [o.rstrip("0123456789") for o in order]
    assert lanes[:4] == ["high", "high", "high", "low"]  # after 3 high turns, one low
    assert lanes.index("low", 4) == 7  # and again after 3 more
    assert len(lanes) == 14


def test_gate_choice_is_pure():
    gate = LaneGate(LANES, burst=2)
    assert gate.choose() is None
    with pytest.raises(ValueError):
        LaneGate(LANES, burst=0)


def test_work_outside_the_turns_can_wait_for_the_higher_lanes():
    """A batch's call that waited for the call before it began at once, while the cancels of
    its jobs waited on the high lane for the stage (a red-team run)."""
    async def go() -> list[str]:
        gate = LaneGate(LANES)
        order: list[str] = []

        async def normal_turn():
            async with gate.turn("normal"):
                await asyncio.sleep(0.05)  # the normal lane holds the stage; high arrives

        async def high_turn():
            await asyncio.sleep(0.01)
            async with gate.turn("high"):
                await asyncio.sleep(0.05)
                order.append("high handled")

        async def normal_call():
            await asyncio.sleep(0.02)
            await gate.higher_lanes_served("normal", within_s=5)
            order.append("normal call")

        async def low_call():  # bounded: a high lane that never ends does not stop it
            gate_busy = LaneGate(LANES)
            async with gate_busy.turn("high"):
                started = asyncio.get_running_loop().time()
                await gate_busy.higher_lanes_served("low", within_s=0.1)
                return asyncio.get_running_loop().time() - started

        await asyncio.gather(normal_turn(), high_turn(), normal_call())
        waited = await low_call()
        assert 0.09 <= waited < 1
        return order

    assert asyncio.run(go()) == ["high handled", "normal call"]
