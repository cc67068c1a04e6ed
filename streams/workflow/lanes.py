"""Priority lanes inside one worker: higher lanes first, lower lanes never starved.

A stage that reads several lanes (qlane.jobs-high, qlane.jobs, qlane.jobs-low and the tenants'
lanes) runs one Faust agent per lane, each with concurrency 1. Before an agent handles a
record it takes its turn at the stage's `LaneGate`: one record (or one execute batch) of
the stage at a time, and among the lanes waiting, the highest. After `burst` turns in a row
went to higher lanes while a lower lane waited, the lowest waiting lane gets one turn, so a
stream of high-priority work slows the lower lanes down but never stops them.

When a turn ends, the gate lets the event loop run a few ticks before it picks the next
lane: an agent whose next record is already fetched then announces it first, so a higher
lane's backlog is not overtaken by a lower lane that happened to be waiting already.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextlib import asynccontextmanager

HANDOFF_TICKS = 20


class LaneGate:
    def __init__(self, lanes: Sequence[str], burst: int = 8) -> None:
        if burst < 1:
            raise ValueError("burst must be >= 1")
        self.lanes = tuple(lanes)  # highest first
        self.burst = burst
        self._waiting: dict[str, list[asyncio.Future]] = {lane: [] for lane in self.lanes}
        self._busy = False
        self._holder: str | None = None  # the lane whose turn it is
        self._streak = 0  # turns in a row given to a higher lane while a lower one waited
        self.granted: list[str] = []  # the lane of every turn, for metrics and tests

    def waiting(self, lane: str) -> int:
        return len(self._waiting[lane])

    def choose(self) -> str | None:
        """The lane whose turn is next, or None when nobody waits (pure, for tests)."""
        ready = [lane for lane in self.lanes if self._waiting[lane]]
        if not ready:
            return None
        if len(ready) > 1 and self._streak >= self.burst:
            return ready[-1]
        return ready[0]

    def _grant(self) -> None:
        lane = self.choose()
        if lane is None:
            return
        lower_waiting = any(self._waiting[low] for low in self.lanes[self.lanes.index(lane) + 1:])
        self._streak = self._streak + 1 if lower_waiting else 0
        self._busy = True
        self._holder = lane
        self.granted.append(lane)
        del self.granted[:-1000]
        self._waiting[lane].pop(0).set_result(None)

    async def _handoff(self) -> None:
        for _ in range(HANDOFF_TICKS):
            await asyncio.sleep(0)
        if not self._busy:
            self._grant()

    @asynccontextmanager
    async def turn(self, lane: str):
        """Wait for this lane's turn; the stage is this caller's until the block ends."""
        future = asyncio.get_running_loop().create_future()
        self._waiting[lane].append(future)
        if not self._busy:
            await self._handoff()
        try:
            await future
        except BaseException:
            if future in self._waiting[lane]:
                self._waiting[lane].remove(future)
            elif future.done() and not future.cancelled():
                self._busy, self._holder = False, None
                asyncio.ensure_future(self._handoff())
            raise
        try:
            yield
        finally:
            self._busy, self._holder = False, None
            self._handoff_task = asyncio.ensure_future(self._handoff())

    async def higher_lanes_served(self, lane: str, within_s: float) -> None:
        """Return once no lane above `lane` waits for the stage or holds it, or after
        `within_s`: work outside the turns (a backend call) that higher lanes may stop
        first. A batch's call began when the call before it ended, while the cancels of
        its jobs waited on the high lane for the stage: the jobs ran, and their cancels
        were told `already executing` (a red-team run)."""
        higher = set(self.lanes[: self.lanes.index(lane)])
        loop = asyncio.get_running_loop()
        until = loop.time() + within_s
        while (self._holder in higher or any(self._waiting[h] for h in higher)) \
                and loop.time() < until:
            await asyncio.sleep(0.005)
