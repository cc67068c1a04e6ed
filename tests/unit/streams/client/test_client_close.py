"""Client.__aexit__: closing must not replace the error a caller leaves with."""

from __future__ import annotations

import asyncio

import pytest

from streams.client import Client
from streams.client.errors import ResultTimeout
from streams.settings import Settings


class FetchCancelledOnStop:
    """aiokafka with its broker gone: stop() re-raises its fetch task's CancelledError."""

    def __init__(self) -> None:
        self.stopped = False

    async def stop(self) -> None:
        self.stopped = True
        raise asyncio.CancelledError


def test_a_failed_close_does_not_replace_the_callers_error():
    client = Client(Settings(topic_prefix="t.qlane"))
    client.watcher, client.producer = FetchCancelledOnStop(), FetchCancelledOnStop()

    async def leave_with_a_timeout():  # `async with client:` past its __aenter__
        try:
            raise ResultTimeout("no outcome within 10s")
        except ResultTimeout as error:
            await client.__aexit__(type(error), error, error.__traceback__)
            raise

    with pytest.raises(ResultTimeout):
        asyncio.run(leave_with_a_timeout())
    assert client.watcher.stopped and client.producer.stopped


def test_a_cancel_of_the_caller_itself_still_propagates():
    client = Client(Settings(topic_prefix="t.qlane"))

    class SlowStop:
        async def stop(self) -> None:
            await asyncio.sleep(10)

    client.watcher, client.producer = None, SlowStop()

    async def main():
        task = asyncio.create_task(client.__aexit__(None, None, None))
        await asyncio.sleep(0.05)
        task.cancel()
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())


def test_a_client_whose_close_hangs_is_left_within_the_callers_timeout(monkeypatch):
    """A producer's stop waits for a send the caller gave up on, for the broker's request
    timeout: `qlane submit --timeout 10` returned after 41 s with two nodes of three down
    (a red-team run)."""
    import asyncio
    import time

    from streams.client import timeouts
    from streams.settings import Settings

    class Hanging:
        dropped = False

        async def __aexit__(self, *exc):
            await asyncio.sleep(60)

        def drop_connections(self):  # given up on: its connections closed all the same
            self.dropped = True

    hanging = Hanging()

    async def connected(settings, tenant, deadline):
        return hanging

    monkeypatch.setattr(timeouts, "connected", connected)

    async def go() -> float:
        started = time.monotonic()
        async with timeouts.open_client(Settings(profile="kafka"), None,
                                        timeouts.Deadline(0.5)):
            pass
        return time.monotonic() - started

    assert asyncio.run(go()) < 3
    assert hanging.dropped
