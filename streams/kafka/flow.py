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

The app also tells how long it has been without running streams (`assignment_pending_s`),
for `qlane_assignment_pending_seconds`, and says so in its log after STUCK_WARNING_S.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

log = logging.getLogger("qlane")

# A worker without running streams this long after its start or a rebalance says so in its
# log; its alert (QlaneAssignmentStuck) waits 300 s and 5 minutes more.
STUCK_WARNING_S = 60.0
STUCK_CHECK_INTERVAL_S = 10.0


def stuck_warning(pending_s: float, profile: str) -> str | None:
    """What a worker whose streams have not run for `pending_s` seconds logs, if anything.
    On the embedded broker the likely cause is Tansu's: a group whose leader left during a
    rebalance is never assigned again, and its workers rejoined every 8 s with nothing at
    INFO or above to say so (a red-team run); on Kafka, a broker outage or a long recovery."""
    if pending_s < STUCK_WARNING_S:
        return None
    if profile == "embedded":
        return (f"no partitions assigned for {pending_s:.0f} s: Tansu 0.6.0 never assigns a "
                "group again whose leader left during a rebalance (workers stopped together); "
                "restart `qlane broker` or give the workers a new QLANE_APP_ID (README "
                "\"Profiles and the embedded broker\")")
    return (f"no partitions assigned for {pending_s:.0f} s: look for a broker outage "
            "(NotEnoughReplicas in the broker log) or a long table recovery "
            "(docs/operations.md, QlaneAssignmentStuck)")


def rebalances_begun(app) -> int:
    """How many rebalances the app has begun (Faust counts them as they begin)."""
    return int(getattr(app, "rebalancing_count", 0) or 0)


class FlowControl(FlowControlEvent):
    def resume(self) -> None:
        was_suspended = not self.is_active()
        self._suspend.clear()
        self._resume.set()
        if was_suspended:
            self.clear()


class App(faust.App):
    # Since when the app has had no running streams: its start, or its current rebalance's.
    _assignment_pending_since: float | None = None
    qlane_profile = "kafka"  # the worker's Settings.profile (create_app)
    qlane_web_limits = (128, 10.0)  # the web port's connections and idle timeout (create_app)

    async def on_first_start(self) -> None:
        await super().on_first_start()
        # Not a Faust timer: those start once table recovery has completed, which a worker
        # without an assignment never reaches.
        self.add_future(self.warn_while_unassigned())

    async def warn_while_unassigned(self) -> None:
        """Log `stuck_warning` once per spell without running streams."""
        warned = False
        while True:
            await asyncio.sleep(STUCK_CHECK_INTERVAL_S)
            warning = stuck_warning(self.assignment_pending_s(), self.qlane_profile)
            if warning is None:
                warned = False
            elif not warned:
                warned = True
                log.warning(warning)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._assignment_pending_since = time.monotonic()

    def _new_web(self):
        from streams.ops.web_server import Web

        return Web(self)

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return FlowControl(loop=self.loop)

    def on_rebalance_start(self) -> None:
        if self._assignment_pending_since is None:
            self._assignment_pending_since = time.monotonic()
        super().on_rebalance_start()

    def on_rebalance_end(self) -> None:
        super().on_rebalance_end()
        self._assignment_pending_since = None

    def assignment_pending_s(self) -> float:
        """Seconds since the app started or its current rebalance began, while its streams
        do not run yet (recovery included); 0 while they run. A worker restarted during a
        broker outage hung in its transactional producers' InitProducerId for as long as the
        outage lasted: its `/` answered OK, it exported no lag series (its lag timer never
        ran) and its last progress stayed at its start, so no alert fired (a red-team run).
        Kept here, not in a Faust sensor: a sensor is called for every record and table
        access."""
        since = self._assignment_pending_since
        return 0.0 if since is None else time.monotonic() - since
