"""Flow control keeps records fetched while flow is already active (streams/kafka/flow.py)."""

import asyncio

from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams.app import create_app
from streams.kafka.flow import FlowControl
from streams.settings import Settings


def buffer(flow_control) -> FlowControlQueue:
    return FlowControlQueue(flow_control=flow_control, clear_on_resume=True)


def records_left_after_a_second_resume(flow_control_class) -> int:
    """Recovery.on_recovery_completed resumes flow again after perform_seek, while a record
    fetched during the seek sits in a stream buffer."""

    async def scenario():
        flow = flow_control_class()
        queue = buffer(flow)
        flow.resume()
        queue.put_nowait("record fetched during the post-recovery seek")
        flow.resume()
        return queue.qsize()

    return asyncio.run(scenario())


def test_a_second_resume_keeps_buffered_records():
    assert records_left_after_a_second_resume(FlowControl) == 1


def test_faust_flow_control_drops_them():
    """The upstream behaviour the subclass exists for; if this fails, Faust changed."""
    assert records_left_after_a_second_resume(FlowControlEvent) == 0


def test_resume_after_suspend_still_drops_stale_records():
    async def scenario():
        flow = FlowControl()
        queue = buffer(flow)
        flow.resume()
        queue.put_nowait("record from before the rebalance")
        flow.suspend()
        assert not flow.is_active()
        flow.resume()
        return queue.qsize(), flow.is_active()

    assert asyncio.run(scenario()) == (0, True)


def test_the_app_uses_it():
    app, _ = create_app(Settings(app_id="flow-test"))
    assert isinstance(app.flow_control, FlowControl)


def test_a_worker_without_an_assignment_says_so_once_per_spell(monkeypatch, caplog):
    """On the embedded broker a group whose leader left during a rebalance is never assigned
    again (Tansu 0.6.0): its workers rejoined every 8 s with nothing at INFO or above in
    their logs for 10 minutes (a red-team run). Faust's timers start only after recovery, so
    the watch is a task of its own."""
    from streams.kafka import flow

    assert flow.stuck_warning(59.0, "embedded") is None
    assert "Tansu" in flow.stuck_warning(61.0, "embedded")
    assert "broker outage" in flow.stuck_warning(61.0, "kafka")
    monkeypatch.setattr(flow, "STUCK_CHECK_INTERVAL_S", 0.01)
    app, _ = create_app(Settings(profile="embedded", broker="localhost:1"))
    app._assignment_pending_since -= 120

    async def watch(seconds: float) -> None:
        task = asyncio.ensure_future(app.warn_while_unassigned())
        await asyncio.sleep(seconds)
        app._assignment_pending_since = None  # assigned: the next spell warns again
        await asyncio.sleep(seconds)
        app._assignment_pending_since = flow.time.monotonic() - 120
        await asyncio.sleep(seconds)
        task.cancel()

    with caplog.at_level("WARNING", logger="qlane"):
        asyncio.run(watch(0.1))
    warnings = [r.message for r in caplog.records if "no partitions assigned" in r.message]
    assert len(warnings) == 2 and "Tansu" in warnings[0], warnings
