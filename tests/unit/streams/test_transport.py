"""The conductor pauses a partition whose records meet a stream buffer past its pause mark."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP
from mode.utils.queues import FlowControlEvent, ThrowableQueue

from streams.transport import pause_if_pressed


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
