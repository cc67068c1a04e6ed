"""Take a stage's records in batches that are as large as the moment allows.

Faust's `Stream.take_events(max, within)` hands out a batch when it is full or when its
timer fires, so a lone record waits out the timer (the batch path's 50 ms tick was most of a
lone job's latency) and an idle stage wakes up on every tick. `take_ready` hands out, at
once, everything that has arrived when the stage asks (natural batching): a lone record
goes alone and without delay, and under load the records that queued while the last batch
ran go together. Only while `busy()` says the stage's previous call still runs (a batch
taken now could not start its call earlier anyway) does it wait for more, up to `max` and
at most `within` after the first record.

Acknowledgements are Faust's: the events of a batch are acknowledged when the next batch is
asked for, as `take_events` does (not when the take is closed with a batch out), so a record
is never acknowledged before the stage has had it; streams/agents/overlap.py keeps a batch it
holds open across a take referenced until it is handled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable


async def take_ready(stream, max_: int, within: float,
                     busy: Callable[[], bool] = lambda: False,
                     waiting: Callable[[object, int], None] | None = None,
                     ) -> AsyncIterator[list]:
    """Batches of at most `max_` Faust events of `stream` (see the module's docstring).
    `waiting(event, +1)` is called as an event arrives, and `waiting(event, -1)` for those
    the take ends with, not handed out; the taker calls it for the events it hands on."""
    if max_ < 1:
        raise ValueError("a batch holds at least one record")
    # Room for one batch beyond the one being taken: what Faust's own buffer bounds stays
    # bounded (the consumer's flow control), and a full batch is there when asked for.
    arrived: asyncio.Queue = asyncio.Queue(maxsize=max_)
    stream.enable_acks = False  # acknowledged here, after the stage had the batch
    note = waiting or (lambda event, step: None)

    async def pump() -> None:
        async for event in stream.events():
            note(event, +1)
            await arrived.put(event)

    pumping = asyncio.ensure_future(pump())
    loop = asyncio.get_running_loop()
    try:
        while True:
            batch = [await _next(arrived, pumping)]
            deadline = loop.time() + within
            while len(batch) < max_:
                if not arrived.empty():
                    batch.append(arrived.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0 or not busy():
                    break
                event = await _next(arrived, pumping, remaining)
                if event is None:
                    break
                batch.append(event)
            yield batch
            # Asked for the next batch: this one was handed on. Not when the take is closed
            # with a batch out (the stage stopping, a crash): acknowledged then, a batch not
            # handled had its offsets committed at the shutdown (streams/agents/common.py
            # `acknowledged_when_handled`).
            for event in batch:
                event.ack()
    except StopAsyncIteration:
        return
    finally:
        pumping.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await pumping
        while not arrived.empty():
            note(arrived.get_nowait(), -1)


async def _next(arrived: asyncio.Queue, pumping: asyncio.Future,
                timeout: float | None = None):
    """The next event; None after `timeout` seconds without one; StopAsyncIteration once
    the stream has ended (the pump's error, if it failed, is raised here)."""
    if not arrived.empty():
        return arrived.get_nowait()
    # A get cancelled before it ran to the end leaves its item in the queue; one that ended
    # has it, and is returned.
    getting = asyncio.ensure_future(arrived.get())
    try:
        await asyncio.wait({getting, pumping}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getting.done():
            getting.cancel()
    if getting.done() and not getting.cancelled():
        return getting.result()
    if not pumping.done():
        return None
    pumping.result()  # raises the pump's error
    raise StopAsyncIteration
