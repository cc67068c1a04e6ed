"""One worker for the integration tests, on the session's broker, with its own topics.

Package-scoped: the worker stops when the integration tests end, so it does not compete
for the two cores with the reliability and unit tests that run after them.
"""

from __future__ import annotations

import asyncio

import pytest

from streams.kafka.topics import ensure_topics
from streams.settings import Settings
from tests.support import (
    ready_worker,
    session_settings,
    start_worker,
    stop_worker,
    wait_until_ready,
)


@pytest.fixture(scope="package")
def settings(broker_address) -> Settings:
    return session_settings(*broker_address, tag="it")


@pytest.fixture(scope="package")
def worker(settings, tmp_path_factory):
    asyncio.run(ensure_topics(settings))
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    # The default warm-ups (tests/conftest.py turns them off for the other test workers).
    process = start_worker(settings, log, env={"QLANE_WARM_UPS": "true"})
    process.qlane_log = log
    try:
        wait_until_ready(settings, log)
        yield process
    finally:
        stop_worker(process)


@pytest.fixture(scope="module")
def staged_settings(broker_address, request) -> Settings:
    """A module's own topics for its staged worker."""
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_")
    return session_settings(*broker_address, tag=f"staged-{module}"[:24])


@pytest.fixture(scope="module")
def staged_worker(staged_settings, tmp_path_factory):
    """A worker on the staged path (QLANE_FUSED_PATH=off) for the module's tests."""
    yield from ready_worker(staged_settings, tmp_path_factory.mktemp("staged-worker"),
                            {"QLANE_FUSED_PATH": "off"})
