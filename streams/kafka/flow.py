"""Faust's app with flow control that does not drop freshly fetched records.

Faust clears every stream buffer whenever `app.flow_control.resume()` is called, on the
assumption that flow was suspended and the buffers hold stale records from before a
rebalance. After table recovery, `Recovery.on_recovery_completed` resumes the stream
partitions and awaits `Consumer.perform_seek()` while flow is *already* active, then calls
`flow_control.resume()` a second time. A record fetched during that await has been handed
to its stream buffer and marked read (the consumer will not fetch it again), so the second
resume silently deletes it: the first record after the committed offset of a partition was
lost in about one restart in three (tests/reliability/test_recovery.py).

Here a resume clears the buffers only when it ends a suspension. Buffers filled before a
suspension are still dropped (Faust also clears them explicitly on revocation), and records
of an older rebalance generation are still skipped by the stream's generation check.
"""

from __future__ import annotations

import faust
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent


class FlowControl(FlowControlEvent):
    def resume(self) -> None:
        was_suspended = not self.is_active()
        self._suspend.clear()
        self._resume.set()
        if was_suspended:
            self.clear()


class App(faust.App):
    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return FlowControl(loop=self.loop)
