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
