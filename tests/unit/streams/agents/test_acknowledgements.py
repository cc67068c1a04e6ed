"""A record a stage was handling when the worker crashed is neither acknowledged nor committed:
the partition's next owner gets it again (a variational loop resumes from its checkpoint).
A red-team run on a 3-node cluster losing a broker: a worker crashed during a loop, its
stage acknowledged the loop's record as the stream stopped, the shutdown committed the offset
past it, and no worker resumed the loop (22 evaluations charged, no result)."""

import asyncio
from types import SimpleNamespace

import faust
import pytest
from faust.events import Event
from faust.types import Message

from streams.agents.common import run_stage
from streams.settings import Settings


def stage_runtime():
    return SimpleNamespace(
        settings=Settings(),
        handled=SimpleNamespace(first_time=lambda address, identity: True),
        app=None,  # transactions.record: no gate (the ack question is Faust's, not the gate's)
    )


def test_a_stopped_stage_does_not_ack_the_record_it_was_handling():
    async def go():
        app = faust.App("qlane-ack-test", broker="kafka://127.0.0.1:1")
        app.flow_control.resume()
        channel = app.channel()
        stream = app.stream(channel)
        # A loop's stage record at offset 2.
        message = Message("qlane.stage.variational", 0, 2, 0.0, 0, None, b"B-var-42", b"v",
                          None)
        message.generation_id = app.consumer_generation_id
        message.incref()
        await channel.put(Event(app, b"B-var-42", b"v", {}, message))
        looping = asyncio.Event()

        async def handle(source):  # a variational loop: runs for many seconds
            looping.set()
            await asyncio.sleep(3600)

        stage = asyncio.ensure_future(
            run_stage(stream, stage_runtime(), {}, "variational", handle))
        await asyncio.wait_for(looping.wait(), 5)
        # The worker crashes (ProducerBuffer KafkaTimeoutError): the agent and its stream
        # stop while the loop runs.
        await asyncio.wait_for(stream.stop(), 10)
        stage.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stage
        return message

    message = asyncio.run(go())
    # Acknowledged, the shutdown's commit takes offset 3 and nobody resumes the loop.
    assert not message.acked
