"""Client steps bounded by the time the caller gave them.

aiokafka waits for a broker that takes connections and never answers, or a cluster without
a quorum, for its own request timeout (40 s) and then tries again: `qlane submit --wait
--timeout 20` returned after 91 s and `qlane cancel --timeout 10` after 79 s while two nodes
of three were down (a red-team run). Each step here ends with `BrokerTimeout` when the
caller's time is up.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

from streams.client.errors import BrokerTimeout
from streams.client.kafka import Client
from streams.settings import Settings

T = TypeVar("T")
log = logging.getLogger("qlane")


async def bounded(step: Awaitable, timeout_s: float, what: str, stated_s: float | None = None):
    """`step` within `timeout_s`, else BrokerTimeout naming `what` and the caller's timeout
    (`stated_s`, when `timeout_s` is what is left of it)."""
    try:
        return await asyncio.wait_for(step, max(timeout_s, 0.0))
    except TimeoutError:
        stated = timeout_s if stated_s is None else stated_s
        raise BrokerTimeout(f"{what}: no answer from the broker within {stated:g}s (is it "
                            "reachable, and does the topic exist?)") from None


class Deadline:
    """One timeout shared by the steps of a command."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._at = time.monotonic() + timeout_s

    def left(self) -> float:
        return max(self._at - time.monotonic(), 0.0)

    async def step(self, step: Awaitable, what: str):
        return await bounded(step, self.left(), what, self.timeout_s)


@asynccontextmanager
async def open_client(settings: Settings, tenant: str | None, within: float | Deadline,
                      watch: bool = False) -> AsyncIterator[Client]:
    """A started Client (watching its outcome topics with `watch`), connected and watching
    within `within` seconds together, or within a shared Deadline (BrokerTimeout past it):
    each with a time of its own, a broker answering just before the first ran out gave
    BrokerTimeout at twice the caller's timeout (a red-team run)."""
    deadline = within if isinstance(within, Deadline) else Deadline(within)
    client = await connected(settings, tenant, deadline)
    try:
        if watch:
            await watched(client, settings, deadline)
        yield client
    finally:
        # Bounded too: a producer's stop waits for a send the caller gave up on, for the
        # broker's request timeout; `qlane submit --timeout 10` returned after 41 s with two
        # nodes of three down (a red-team run).
        left = within.left() if isinstance(within, Deadline) else within
        try:
            await asyncio.wait_for(client.__aexit__(None, None, None),
                                   max(left, CLOSE_GRACE_S))
        except TimeoutError:
            client.drop_connections()
            log.warning("closing the client to %s: no answer from the broker; its "
                        "connections closed without waiting", settings.broker)


async def watched(client: Client, settings: Settings, deadline: Deadline) -> None:
    """`client` watching its outcome topics (`started`); a wait for topics that never came
    ends with a BrokerTimeout naming them: a wrong topic prefix read "no answer from the
    broker", which answered all along (a red-team run)."""
    what = f"reading the outcome topics on {settings.broker}"
    try:
        await started(client.watching, settings, deadline, what)
    except BrokerTimeout:
        if not client.absent_topics:
            raise
        raise BrokerTimeout(
            f"{what}: {', '.join(client.absent_topics)} did not exist within "
            f"{deadline.timeout_s:g}s (is the topic prefix {settings.topic_prefix!r} right? "
            "a worker creates its topics when it starts)") from None


async def connected(settings: Settings, tenant: str | None, deadline: Deadline) -> Client:
    """A started Client, asked for again while the cluster refuses connections (`started`)."""
    async def start() -> Client:
        return await Client(settings, tenant).__aenter__()  # it closes what failed to start

    return await started(start, settings, deadline, f"connecting to {settings.broker}")


async def started(start: Callable[[], Awaitable[T]], settings: Settings, deadline: Deadline,
                  what: str) -> T:
    """`start()` (which makes and starts a client part, and closes it when that fails). A
    cluster that refuses connections (a broker restarting, not up yet) is asked again until
    the deadline, as one that takes them and does not answer is waited for: during a 17 s
    broker restart every `job.result()` raised aiokafka's KafkaConnectionError at once, and a
    VQE loop under scipy's COBYLA died of it; `qlane cancel --timeout 20` gave up in 0.9 s
    (red-team runs). Past the deadline: BrokerTimeout (retryable), naming the last error;
    refused credentials: AccessRefused at once."""
    from streams.kafka.security import AccessRefused, broker_unavailable, check_authentication

    asked_credentials = settings.security_protocol == "PLAINTEXT"
    refused: Exception | None = None
    while True:
        try:
            return await deadline.step(start(), what)
        except Exception as error:
            if isinstance(error, BrokerTimeout) and refused is not None:
                error = refused  # the last attempt only ran out of time
            elif isinstance(error, BrokerTimeout) or not broker_unavailable(error):
                raise
            refused = error
            if not asked_credentials:  # refused credentials look like a failed connection
                asked_credentials = True
                try:
                    await bounded(check_authentication(settings), deadline.left(), what)
                except AccessRefused:
                    raise
                except Exception:  # noqa: BLE001 - not a refusal: ask again below
                    pass
            if deadline.left() <= 0:
                raise BrokerTimeout(
                    f"{what}: the cluster did not take a connection within "
                    f"{deadline.timeout_s:g}s ({type(error).__name__}: {error})") from None
            await asyncio.sleep(min(RECONNECT_PAUSE_S, deadline.left()))


async def delivered(send: Callable[[], Awaitable[T]], deadline: Deadline, what: str) -> T:
    """`send()`, a record's send, made again while the cluster cannot take it, until the
    deadline: a leader lost with its node, aiokafka's producer raised NodeNotReadyError at
    once, or its request timeout, while the other nodes took the partitions over within
    seconds (a red-team run: one node of three killed, 11 jobs of three runs of 600-700 on
    16 threads failed with most of their 300 s left). A request sent again after a send
    that may have reached the broker is safe: the same workflow id with the same request
    is a duplicate, never a second run; a cancel sent twice cancels once. Past the
    deadline: BrokerTimeout, naming the last error."""
    from streams.kafka.security import broker_unavailable

    last: Exception | None = None
    while True:
        try:
            return await deadline.step(send(), what)
        except Exception as error:
            if isinstance(error, BrokerTimeout):
                if last is None:
                    raise
            elif not broker_unavailable(error):
                raise
            else:
                last = error
            if deadline.left() <= 0:
                raise BrokerTimeout(
                    f"{what}: the cluster did not take it within {deadline.timeout_s:g}s "
                    f"({type(last).__name__}: {last})") from None
            log.info("%s: the cluster cannot take it yet (%r); sending again", what, last)
            await asyncio.sleep(min(RESEND_PAUSE_S, deadline.left()))


RECONNECT_PAUSE_S = 1.0
RESEND_PAUSE_S = 0.5
CLOSE_GRACE_S = 1.0  # a close past the caller's timeout gets this long
