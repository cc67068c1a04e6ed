"""A batched stage whose next backend call runs while the current batch is handled.

The execute stage makes one backend call per taken batch, then handles the batch's records
one by one (statuses, charges, the mitigate tasks). Run in that order, a backend in a
process of its own (the simulator process) waits for that bookkeeping after every call.
`run_overlapped` takes the next batch while a call runs and starts its call before the
previous batch's records are handled, so at most two batches are open per stage: one whose
records are being handled and one whose call runs.

Faust's `take_events` acknowledges a batch's events when the next batch is taken. Taking
early would acknowledge records that are not handled yet (a crash would then lose them), so
every event of a batch that stays open across a take gets one more reference first: the
take's acknowledgement only removes that reference, and the record is acknowledged when
`complete` has handled it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol


class OpenBatch(Protocol):
    events: Sequence[Any]  # Faust events: `.message` holds the reference count
    call: asyncio.Future | None  # the backend call, while it may run; None: no call to wait for


async def run_overlapped(
    batches: AsyncIterator[Sequence[Any]],
    *,
    begin: Callable[[Sequence[Any]], Awaitable[OpenBatch]],
    before_next: Callable[[OpenBatch], Awaitable[None]] | None = None,
    complete: Callable[[OpenBatch], Awaitable[None]],
    turn: Callable[[], AbstractAsyncContextManager],
    overlap: bool | Callable[[], bool] = True,
) -> None:
    """Take batches from `batches` until it ends.

    `begin(taken)` starts a batch (its call, if any); `before_next(open)`, if given, runs once
    the open batch's call has ended and before the next batch begins (the execute stage clears the
    in-flight marks there, which the next batch's marks would overwrite); `complete(batch)`
    handles a batch's records in order and acknowledges them. Every step runs inside `turn()`
    (the stage's lane gate). A batch with no call is completed at once, and so is every
    batch when `overlap` is false (then each batch is begun, waited for and handled before
    the next is taken); a callable `overlap` is asked once per batch, after its begin."""
    open_batch: OpenBatch | None = None  # begun, its call may still run, not completed
    taking: asyncio.Future | None = None
    try:
        while True:
            if taking is None:
                taking = asyncio.ensure_future(batches.__anext__())
            if open_batch is not None and not taking.done():
                await asyncio.wait({taking, open_batch.call},
                                   return_when=asyncio.FIRST_COMPLETED)
                if not taking.done():  # the call ended first: nothing to overlap it with
                    async with turn():
                        await complete(open_batch)
                    open_batch = None
                    continue
            try:
                taken = await taking
            except StopAsyncIteration:
                break
            finally:
                taking = None
            async with turn():
                if open_batch is not None and before_next is not None:
                    await before_next(open_batch)
                batch = await begin(taken)
                if open_batch is not None:
                    await complete(open_batch)
                    open_batch = None
                if batch.call is None or not (overlap() if callable(overlap) else overlap):
                    await complete(batch)
                else:
                    for event in batch.events:
                        event.message.incref()  # the next take acknowledges it once
                    open_batch = batch
        if open_batch is not None:
            async with turn():
                await complete(open_batch)
            open_batch = None
    finally:
        if taking is not None:
            taking.cancel()
        if open_batch is not None and open_batch.call is not None:
            open_batch.call.cancel()  # its records are not acknowledged: they come again


class StageActivity:
    """What a batched stage does between its records: beginning a batch (preparing it,
    marking it in flight) or waiting for its backend call. The take waits for more records
    only while a call runs (streams/agents/take.py); the idle commit waits while either goes
    on (streams/kafka/transactions.py `busy_between_records`)."""

    def __init__(self) -> None:
        self._last_call: asyncio.Future | None = None
        self.beginning = False
        # Called when such work ends and none is left: the idle commit waits for that.
        self.on_idle: Callable[[], None] | None = None

    @property
    def last_call(self) -> asyncio.Future | None:
        return self._last_call

    @last_call.setter
    def last_call(self, call: asyncio.Future | None) -> None:
        self._last_call = call
        if call is not None:
            call.add_done_callback(lambda _: self._ended())

    def _ended(self) -> None:
        if self.on_idle is not None and not self.busy():
            self.on_idle()

    def calling(self) -> bool:
        return self._last_call is not None and not self._last_call.done()

    def busy(self) -> bool:
        return self.beginning or self.calling()

    def begins(self, begin: Callable[[Sequence[Any]], Awaitable[OpenBatch]]):
        """`begin`, marked as beginning while it runs."""
        async def marked(taken: Sequence[Any]) -> OpenBatch:
            self.beginning = True
            try:
                return await begin(taken)
            finally:
                self.beginning = False
                self._ended()
        return marked
