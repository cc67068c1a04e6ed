"""Flow control keeps records fetched while flow is already active (streams/flow.py)."""

import asyncio

from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams.app import create_app
from streams.flow import FlowControl
from streams.settings import Settings


def buffer(flow_control) -> FlowControlQueue:
    return FlowControlQueue(flow_control=flow_control, clear_on_resume=True)


def test_a_second_resume_keeps_buffered_records():
    async def scenario():
        flow = FlowControl()
        queue = buffer(flow)
        flow.resume()
        queue.put_nowait("record fetched during the post-recovery seek")
        flow.resume()  # Recovery.on_recovery_completed resumes again after perform_seek
        return queue.qsize()

    assert asyncio.run(scenario()) == 1


def test_faust_flow_control_drops_them():
    """The upstream behaviour the subclass exists for; if this fails, Faust changed."""

    async def scenario():
        flow = FlowControlEvent()
        queue = buffer(flow)
        flow.resume()
        queue.put_nowait("record")
        flow.resume()
        return queue.qsize()

    assert asyncio.run(scenario()) == 0


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
