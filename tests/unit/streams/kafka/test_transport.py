"""The conductor pauses a partition whose records meet a stream buffer past its pause mark."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.types import TP
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from streams.kafka.transport import last_delivered, pause_if_pressed, refetch_after_pause


class RecordingConsumer:
    def __init__(self) -> None:
        self.paused: list[TP] = []
        self.resumed: list[TP] = []

    def on_buffer_full(self, tp: TP) -> None:
        self.paused.append(tp)

    def on_buffer_drop(self, tp: TP) -> None:
        self.resumed.append(tp)


def test_a_partition_meeting_a_full_buffer_is_paused_and_resumed_once_it_drains():
    queue = ThrowableQueue(maxsize=10, flow_control=FlowControlEvent())  # pause 8, resume 4
    channel = SimpleNamespace(queue=queue)
    consumer = RecordingConsumer()
    tp = TP("qlane.jobs", 3)

    def resume() -> None:
        consumer.on_buffer_drop(tp)

    for _ in range(7):
        queue.put_nowait(object())
    assert not pause_if_pressed(consumer, tp, [channel], resume)  # below the mark
    for _ in range(3):
        queue.put_nowait(object())
    assert queue.full()
    # What Faust leaves running: this partition put nothing past the mark itself.
    assert pause_if_pressed(consumer, tp, [channel], resume)
    assert consumer.paused == [tp]
    assert not pause_if_pressed(consumer, tp, [channel], resume)  # already paused: once
    while queue.qsize() > 4:
        queue.get_nowait()
    assert consumer.resumed == []
    queue.get_nowait()  # at the resume mark the buffer calls back
    assert consumer.resumed == [tp]


class PausingConsumer:
    """Faust's consumer as the dead-letter guard's hold uses it: pause, resume, seek."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def pause_partitions(self, tps) -> None:
        self.calls.append(("pause", *tps))

    def resume_partitions(self, tps) -> None:
        self.calls.append(("resume", *tps))

    async def seek(self, tp, offset) -> None:
        self.calls.append(("seek", tp, offset))


def test_a_held_partition_is_fetched_again_after_its_last_delivered_record():
    """Faust drops the fetched records of a paused partition: after the hold the partition
    is read again from the record after the last one the streams got."""
    from streams.agents.common import hold_source
    from streams.workflow.deadletter import SourceRecord
    from streams.workflow.dlq_guard import Hold

    consumer = PausingConsumer()
    held, other = TP("qlane.jobs", 0), TP("qlane.jobs", 1)
    last_delivered(consumer).update({("qlane.jobs", 0): 188, ("qlane.jobs", 1): 40})
    runtime = SimpleNamespace(app=SimpleNamespace(consumer=consumer), paused_stages=set())
    source = SourceRecord("qlane.jobs", 0, 188, None, b"k", b"garbage", ())

    async def go():
        hold_source(runtime, "preprocess", source, Hold(0.05, "50 consecutive dead letters"))
        await asyncio.sleep(0.2)

    asyncio.run(go())
    assert consumer.calls == [("pause", held), ("resume", held), ("seek", held, 189)]
    assert runtime.paused_stages == set()

    untouched = PausingConsumer()  # nothing delivered yet: the committed offset holds
    asyncio.run(refetch_after_pause(untouched, other))
    assert untouched.calls == []


def test_the_positions_of_many_partitions_are_read_in_one_hop_to_the_consumer_thread():
    """The lag gauge asks for every partition's position: one call into the consumer's
    thread, each partition's answer or error in it."""
    from streams.kafka.transport import ConsumerThread

    calls = []

    class AiokafkaConsumer:
        async def position(self, tp):
            if tp.partition == 1:
                raise AssertionError("no position yet")
            return 10 + tp.partition

    async def call_thread(function, *args):
        calls.append(function)
        return await function(*args)

    thread = SimpleNamespace(_ensure_consumer=AiokafkaConsumer, call_thread=call_thread)
    thread._positions = lambda partitions: ConsumerThread._positions(thread, partitions)
    tps = [TP("qlane.jobs", 0), TP("qlane.jobs", 1), TP("qlane.jobs", 2)]
    found = asyncio.run(ConsumerThread.positions(thread, tps))
    assert len(calls) == 1
    assert found[tps[0]] == 10 and found[tps[2]] == 12
    assert isinstance(found[tps[1]], AssertionError)
