"""Client steps bounded by the caller's timeout (streams/client/timeouts.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka.errors import RequestTimedOutError

from streams.client import timeouts
from streams.client.errors import BrokerTimeout
from streams.settings import Settings


class WatchingClient:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.attempts = 0
        self.absent_topics: list[str] = []

    async def watching(self):
        self.attempts += 1
        if self.attempts <= self.failures:
            raise RequestTimedOutError()
        return self

    async def __aexit__(self, *exc) -> None:
        pass


def open_watching(monkeypatch, client: WatchingClient, timeout_s: float):
    async def connected(settings, tenant, deadline):
        return client

    monkeypatch.setattr(timeouts, "connected", connected)
    monkeypatch.setattr(timeouts, "RECONNECT_PAUSE_S", 0.05)

    async def go():
        async with timeouts.open_client(Settings(), None, timeout_s, watch=True) as opened:
            return opened

    return asyncio.run(go())


def test_the_outcome_watcher_is_asked_again_while_the_broker_cannot_answer(monkeypatch):
    """A broker frozen while a job's client started its watcher gave aiokafka's own
    RequestTimedOutError, NodeNotReadyError or 'Unable to bootstrap', some at half the
    caller's timeout (a red-team run)."""
    client = WatchingClient(failures=2)
    assert open_watching(monkeypatch, client, 5) is client
    assert client.attempts == 3


def test_a_watcher_that_never_starts_is_a_broker_timeout_within_the_callers_time(monkeypatch):
    started = time.monotonic()
    with pytest.raises(BrokerTimeout, match="did not take a connection within 1s"):
        open_watching(monkeypatch, WatchingClient(failures=10**6), 1)
    assert time.monotonic() - started < 3


def test_connecting_and_watching_share_the_callers_time(monkeypatch):
    """Each with a deadline of its own, a broker answering just before the first ran out
    gave BrokerTimeout at twice timeout_s (a red-team run)."""
    client = WatchingClient(failures=10**6)

    async def connected(settings, tenant, deadline):
        await asyncio.sleep(1.2)  # most of the caller's 1.5 s
        return client

    monkeypatch.setattr(timeouts, "connected", connected)
    monkeypatch.setattr(timeouts, "RECONNECT_PAUSE_S", 0.05)

    async def go():
        async with timeouts.open_client(Settings(), None, 1.5, watch=True):
            pass

    started = time.monotonic()
    with pytest.raises(BrokerTimeout):
        asyncio.run(go())
    assert time.monotonic() - started < 2.2


def test_a_send_the_cluster_never_takes_is_a_broker_timeout_naming_the_last_error(monkeypatch):
    from aiokafka.errors import NodeNotReadyError

    monkeypatch.setattr(timeouts, "RESEND_PAUSE_S", 0.01)
    attempts = []

    async def send():
        attempts.append(time.monotonic())
        raise NodeNotReadyError("node 2")

    started = time.monotonic()
    with pytest.raises(BrokerTimeout, match="did not take it within 0.3s.*NodeNotReadyError"):
        asyncio.run(timeouts.delivered(send, timeouts.Deadline(0.3), "submitting wf"))
    assert len(attempts) > 2
    assert time.monotonic() - started < 5


def test_a_send_refused_for_good_is_not_sent_again():
    attempts = []

    async def send():
        attempts.append(1)
        raise ValueError("not a broker's trouble")

    with pytest.raises(ValueError):
        asyncio.run(timeouts.delivered(send, timeouts.Deadline(5), "submitting wf"))
    assert attempts == [1]
