"""take_ready: a lone record goes at once, what queued goes together, waiting for more only
while the stage's previous call runs; a batch is acknowledged when the next is asked for."""

from __future__ import annotations

import asyncio
import functools

import pytest

from streams.agents.take import take_ready


class Event:
    def __init__(self, n: int) -> None:
        self.n = n
        self.acked = False

    def ack(self) -> None:
        self.acked = True


class Stream:
    """Faust's stream as take_ready uses it: `events()` and `enable_acks`."""

    def __init__(self) -> None:
        self.enable_acks = True
        self.arrivals: asyncio.Queue = asyncio.Queue()

    def arrive(self, *numbers: int) -> list[Event]:
        events = [Event(n) for n in numbers]
        for event in events:
            self.arrivals.put_nowait(event)
        return events

    def end(self, error: BaseException | None = None) -> None:
        self.arrivals.put_nowait(error or StopAsyncIteration())

    async def events(self):
        while True:
            item = await self.arrivals.get()
            if isinstance(item, StopAsyncIteration):
                return
            if isinstance(item, BaseException):
                raise item
            yield item


def numbers(batch) -> list[int]:
    return [event.n for event in batch]


def run(test):
    @functools.wraps(test)
    def wrapper():
        asyncio.run(asyncio.wait_for(test(), 10))
    return wrapper


@run
async def test_a_lone_record_goes_at_once_and_what_queued_goes_together():
    stream = Stream()
    batches = take_ready(stream, max_=4, within=5.0)
    stream.arrive(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert numbers(await batches.__anext__()) == [1]
    assert loop.time() - started < 1.0  # not the 5 s window
    stream.arrive(2, 3, 4, 5, 6)
    await asyncio.sleep(0.01)
    assert numbers(await batches.__anext__()) == [2, 3, 4, 5]  # at most max_
    assert numbers(await batches.__anext__()) == [6]
    assert stream.enable_acks is False
    await batches.aclose()


@run
async def test_it_waits_for_more_only_while_busy_and_at_most_within():
    stream = Stream()
    busy = [True]
    batches = take_ready(stream, max_=3, within=0.3, busy=lambda: busy[0])
    loop = asyncio.get_running_loop()
    stream.arrive(1)
    loop.call_later(0.05, stream.arrive, 2)
    started = loop.time()
    first = await batches.__anext__()
    waited = loop.time() - started
    assert numbers(first) == [1, 2]  # waited for the second, not for a third
    assert 0.25 <= waited < 2.0
    stream.arrive(3)
    loop.call_later(0.05, stream.arrive, 4)
    loop.call_later(0.1, stream.arrive, 5)
    assert numbers(await batches.__anext__()) == [3, 4, 5]  # full before the window ends
    busy[0] = False
    stream.arrive(6)
    loop.call_later(0.1, stream.arrive, 7)
    assert numbers(await batches.__anext__()) == [6]
    await batches.aclose()


@run
async def test_a_batch_is_acknowledged_when_the_next_is_asked_for():
    stream = Stream()
    batches = take_ready(stream, max_=8, within=0.1)
    first = stream.arrive(1, 2)
    await asyncio.sleep(0.01)
    assert numbers(await batches.__anext__()) == [1, 2]
    assert not any(event.acked for event in first)
    second = stream.arrive(3)
    assert numbers(await batches.__anext__()) == [3]
    assert all(event.acked for event in first)
    assert not second[0].acked
    # Closed with a batch out (the stage stopping, a crash): not acknowledged, its records
    # come again; acknowledged, a shutdown committed offsets past records never handled.
    await batches.aclose()
    assert not second[0].acked


@run
async def test_the_take_ends_with_the_stream_and_raises_its_error():
    stream = Stream()
    batches = take_ready(stream, max_=2, within=0.1)
    stream.arrive(1)
    stream.end()
    assert numbers(await batches.__anext__()) == [1]
    with pytest.raises(StopAsyncIteration):
        await batches.__anext__()

    failing = Stream()
    batches = take_ready(failing, max_=2, within=0.1)
    failing.end(RuntimeError("consumer gone"))
    with pytest.raises(RuntimeError, match="consumer gone"):
        await batches.__anext__()


@run
async def test_cancelling_a_take_loses_no_record():
    """A take cancelled while it waits (the stage stops) leaves nothing half-taken: a record
    that arrives right then is in the next take's first batch."""
    stream = Stream()
    batches = take_ready(stream, max_=4, within=0.05, busy=lambda: True)
    stream.arrive(1)
    assert numbers(await batches.__anext__()) == [1]
    taking = asyncio.ensure_future(batches.__anext__())
    await asyncio.sleep(0.01)
    taking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await taking
    stream.arrive(2)
    again = take_ready(stream, max_=4, within=0.05)
    assert numbers(await again.__anext__()) == [2]
    await again.aclose()


def test_a_batch_holds_at_least_one_record():
    with pytest.raises(ValueError):
        asyncio.run(take_ready(Stream(), max_=0, within=0.1).__anext__())
