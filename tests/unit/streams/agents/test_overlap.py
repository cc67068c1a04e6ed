"""run_overlapped: the next batch's call runs while a batch is handled; nothing is
acknowledged before it is handled; batches are completed in order, one call at a time."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from streams.agents.overlap import run_overlapped


class Message:
    """Faust's reference-counted acknowledgement, as faust.types.tuples.Message does it."""

    def __init__(self) -> None:
        self.refcount = 1
        self.acked = False

    def incref(self, n: int = 1) -> None:
        self.refcount += n

    def ack(self) -> None:
        if not self.acked:
            self.refcount = max(self.refcount - 1, 0)
            self.acked = self.refcount == 0


@dataclass
class Event:
    message: Message = field(default_factory=Message)

    def ack(self) -> None:
        self.message.ack()


@dataclass
class Batch:
    index: int
    events: list
    call: asyncio.Future | None


async def take_events(batches: list[list[Event]], gaps: list[asyncio.Event] | None = None):
    """Like Faust's take_events: a batch's events are acknowledged when the next is taken."""
    for index, batch in enumerate(batches):
        if gaps is not None:
            await gaps[index].wait()
        try:
            yield batch
        finally:
            for event in batch:
                event.ack()


class Stage:
    """begin / before_next / complete that log what they do; calls take `call_s`."""

    def __init__(self, call_s: float = 0.02, calls: bool = True) -> None:
        self.log: list[tuple] = []
        self.call_s = call_s
        self.calls = calls
        self.running_calls = 0
        self.most_calls_at_once = 0
        self.completed = asyncio.Event()

    async def _call(self, index: int) -> str:
        self.running_calls += 1
        self.most_calls_at_once = max(self.most_calls_at_once, self.running_calls)
        try:
            await asyncio.sleep(self.call_s)
        finally:
            self.running_calls -= 1
        self.log.append(("call ended", index))
        return f"outcome {index}"

    async def begin(self, taken) -> Batch:
        index = len([e for e in self.log if e[0] == "begin"])
        self.log.append(("begin", index))
        call = asyncio.ensure_future(self._call(index)) if self.calls else None
        return Batch(index, list(taken), call)

    async def before_next(self, batch: Batch) -> None:
        await batch.call
        self.log.append(("before next", batch.index))

    async def complete(self, batch: Batch) -> None:
        acked_at_start = [event.message.acked for event in batch.events]
        if batch.call is not None:
            assert await batch.call == f"outcome {batch.index}"
        self.log.append(("complete", batch.index, acked_at_start))
        for event in batch.events:
            event.ack()
        self.completed.set()

    def turn(self):
        return contextlib.nullcontext()  # the lane gate; one lane here


def run(stage: Stage, batches, gaps=None):
    return run_overlapped(take_events(batches, gaps), begin=stage.begin,
                          before_next=stage.before_next, complete=stage.complete,
                          turn=stage.turn)


def steps(stage: Stage, name: str) -> list:
    return [entry for entry in stage.log if entry[0] == name]


def test_the_next_call_starts_before_the_batch_is_handled_and_nothing_is_acked_early():
    batches = [[Event(), Event()] for _ in range(4)]
    stage = Stage()
    asyncio.run(run(stage, batches))

    order = [entry[:2] for entry in stage.log]
    for index in range(3):
        # batch index+1's call is begun before batch index is handled
        assert order.index(("begin", index + 1)) < order.index(("complete", index))
        assert order.index(("before next", index)) < order.index(("begin", index + 1))
    # completed in order, every one once, and none of its records acknowledged before
    completes = steps(stage, "complete")
    assert [entry[1] for entry in completes] == [0, 1, 2, 3]
    assert all(not any(acked) for _, _, acked in completes)
    assert all(event.message.acked for batch in batches for event in batch)
    assert stage.most_calls_at_once == 1


def test_a_batch_is_handled_when_its_call_ends_although_no_next_batch_comes():
    async def go():
        first, second = [Event()], [Event()]
        gaps = [asyncio.Event(), asyncio.Event()]
        gaps[0].set()
        stage = Stage()
        task = asyncio.ensure_future(run(stage, [first, second], gaps))
        await asyncio.wait_for(stage.completed.wait(), 5)
        assert [entry[1] for entry in steps(stage, "complete")] == [0]
        assert first[0].message.acked
        stage.completed.clear()
        gaps[1].set()  # the second batch comes later, and is handled on its own
        await asyncio.wait_for(task, 5)
        assert [entry[1] for entry in steps(stage, "complete")] == [0, 1]
        assert second[0].message.acked

    asyncio.run(go())


def test_a_batch_without_a_call_is_completed_at_once_and_acked_once():
    batches = [[Event()], [Event(), Event()]]
    stage = Stage(calls=False)
    asyncio.run(run(stage, batches))
    assert [entry[:2] for entry in stage.log] == [
        ("begin", 0), ("complete", 0), ("begin", 1), ("complete", 1)]
    assert all(event.message.acked and event.message.refcount == 0
               for batch in batches for event in batch)


def test_a_stopped_stage_leaves_its_open_batch_unacknowledged():
    async def go():
        first = [Event(), Event()]
        gaps = [asyncio.Event(), asyncio.Event()]
        gaps[0].set()
        stage = Stage(call_s=5.0)
        task = asyncio.ensure_future(run(stage, [first, [Event()]], gaps))
        while not steps(stage, "begin"):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert not steps(stage, "complete")
        assert not any(event.message.acked for event in first)  # they come again
        assert stage.running_calls == 0  # the call was cancelled with the stage

    asyncio.run(go())


def test_without_overlap_each_batch_is_handled_before_the_next_is_begun():
    batches = [[Event()] for _ in range(3)]
    stage = Stage()
    asyncio.run(run_overlapped(take_events(batches), begin=stage.begin,
                               before_next=stage.before_next, complete=stage.complete,
                               turn=stage.turn, overlap=False))
    assert [entry[:2] for entry in stage.log] == [
        ("begin", 0), ("call ended", 0), ("complete", 0),
        ("begin", 1), ("call ended", 1), ("complete", 1),
        ("begin", 2), ("call ended", 2), ("complete", 2)]
    assert all(event.message.acked for batch in batches for event in batch)


def test_a_callable_overlap_is_asked_per_batch_after_its_begin():
    batches = [[Event()] for _ in range(4)]
    stage = Stage()
    answers = iter([False, True, False, True])

    def overlap() -> bool:
        stage.log.append(("asked", len(steps(stage, "begin")) - 1))
        return next(answers)

    asyncio.run(run_overlapped(take_events(batches), begin=stage.begin,
                               before_next=stage.before_next, complete=stage.complete,
                               turn=stage.turn, overlap=overlap))
    order = [entry[:2] for entry in stage.log]
    assert [entry[1] for entry in steps(stage, "asked")] == [0, 1, 2, 3]
    # batch 0 (no) is handled before batch 1 begins; batch 1 (yes) stays open past the
    # begin of batch 2, which (no) is handled at once, right after batch 1
    assert order.index(("complete", 0)) < order.index(("begin", 1))
    assert order.index(("begin", 2)) < order.index(("complete", 1))
    assert order.index(("complete", 1)) < order.index(("complete", 2)) < order.index(("begin", 3))
    assert [entry[1] for entry in steps(stage, "complete")] == [0, 1, 2, 3]
    assert all(event.message.acked for batch in batches for event in batch)


def test_a_stage_is_busy_while_it_begins_a_batch_and_while_its_call_runs():
    from streams.agents.overlap import StageActivity

    activity = StageActivity()
    seen = []

    async def begin(taken):
        seen.append((activity.beginning, activity.busy(), activity.calling()))
        activity.last_call = asyncio.ensure_future(asyncio.sleep(0.05))
        return Batch(0, list(taken), activity.last_call)

    async def go():
        batch = await activity.begins(begin)([Event()])
        during = (activity.beginning, activity.calling(), activity.busy())
        await batch.call
        return during, (activity.calling(), activity.busy())

    during, after = asyncio.run(go())
    assert seen == [(True, True, False)]
    assert during == (False, True, True)
    assert after == (False, False)
    assert not StageActivity().busy()


def test_a_stage_says_when_its_work_between_records_has_ended():
    """`on_idle` is the idle commit's cue: called when the beginning or the call ends and
    nothing else is under way, not while the call still runs."""
    from streams.agents.overlap import StageActivity

    activity = StageActivity()
    cues = []
    activity.on_idle = lambda: cues.append(activity.busy())

    async def begin(taken):
        activity.last_call = asyncio.ensure_future(asyncio.sleep(0.03))
        return Batch(0, list(taken), activity.last_call)

    async def go():
        batch = await activity.begins(begin)([Event()])
        after_begin = list(cues)  # the call still runs: no cue
        await batch.call
        await asyncio.sleep(0)  # the call's done callbacks
        return after_begin, list(cues)

    after_begin, after_call = asyncio.run(go())
    assert after_begin == []
    assert after_call == [False]
