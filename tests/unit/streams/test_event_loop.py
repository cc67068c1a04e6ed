"""QLANE_EVENT_LOOP: asyncio's own loop by default, uvloop's when asked for."""

from __future__ import annotations

import asyncio
import builtins
import logging

import pytest
import uvloop

from streams.cli import use_event_loop
from streams.settings import Settings


@pytest.fixture(autouse=True)
def restore_policy():
    policy = asyncio.get_event_loop_policy()
    yield
    asyncio.set_event_loop_policy(policy)


def test_uvloop_when_asked_for() -> None:
    use_event_loop("uvloop")
    loop = asyncio.new_event_loop()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_the_default_keeps_the_standard_loop(monkeypatch) -> None:
    monkeypatch.delenv("QLANE_EVENT_LOOP", raising=False)
    asyncio.set_event_loop_policy(None)
    use_event_loop(Settings().event_loop)
    loop = asyncio.new_event_loop()
    try:
        assert not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_without_uvloop_the_worker_warns_and_keeps_asyncio(monkeypatch, caplog) -> None:
    asyncio.set_event_loop_policy(None)
    real_import = builtins.__import__

    def no_uvloop(name, *args, **kwargs):
        if name == "uvloop":
            raise ImportError("no uvloop here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_uvloop)
    with caplog.at_level(logging.WARNING, logger="qlane"):
        use_event_loop("uvloop")
    assert "uvloop is not installed" in caplog.text
    loop = asyncio.new_event_loop()
    try:
        assert not isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


def test_an_unknown_event_loop_is_refused(monkeypatch) -> None:
    monkeypatch.setenv("QLANE_EVENT_LOOP", "trio")
    with pytest.raises(ValueError, match="event_loop"):
        Settings()
