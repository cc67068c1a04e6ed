"""Helpers shared by the integration and reliability suites (workers as real processes)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from pathlib import Path

from streams.client import Client, job_request, read_topic
from streams.ops.processes import start_worker  # noqa: F401  (the suites import it from here)
from streams.ops.processes import stop_process as stop_worker  # noqa: F401
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
BELL = (ROOT / "examples" / "bell.qasm").read_text()


def session_settings(bootstrap: str, profile: str, tag: str, **overrides) -> Settings:
    run = uuid.uuid4().hex[:8]
    return Settings(broker=bootstrap, profile=profile, topic_prefix=f"{tag}{run}.qlane",
                    **{"app_id": f"qlane-{tag}-{run}", "partitions": 2, **overrides})


def submit_and_wait(settings: Settings, jobs: list[dict], timeout_s: float = 120.0) -> dict:
    async def go():
        async with Client(settings) as client:
            return await client.submit_and_wait(jobs, timeout_s)

    return asyncio.run(go())


def wait_for(predicate, timeout_s: float = 60):
    """The predicate's first truthy value within the timeout, else its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    return predicate()


def wait_until_ready(settings: Settings, log_path: Path, timeout_s: float = 180) -> None:
    warmup = job_request(workflow_id=f"warmup-{uuid.uuid4().hex[:6]}", circuit=BELL, shots=100)
    started = time.monotonic()
    outcome = submit_and_wait(settings, [warmup], timeout_s=timeout_s)[warmup["workflow_id"]]
    assert outcome.result is not None, (
        f"worker not ready after {time.monotonic() - started:.0f}s:\n"
        f"{log_path.read_text()[-4000:]}"
    )


def ready_worker(settings: Settings, log_dir: Path, env: dict | None = None):
    """A worker of the caller's own on the settings' topics, ready (its warm-up job done),
    stopped when the generator is closed: the body of a module-scoped fixture."""
    with contextlib.closing(ready_workers([(settings, log_dir, env)])) as workers:
        for (process,) in workers:
            yield process


def ready_workers(specs: list[tuple[Settings, Path, dict | None]]):
    """ready_worker for several (settings, log dir, env) at once: all start together, then
    each is waited for; yields the processes in order (one yield), stops them all after."""
    from streams.kafka.topics import ensure_topics

    processes = []
    try:
        for settings, log_dir, env in specs:
            asyncio.run(ensure_topics(settings))
            processes.append(start_worker(settings, log_dir / "worker.log", env=env))
        for settings, log_dir, _ in specs:
            wait_until_ready(settings, log_dir / "worker.log")
        yield tuple(processes)
    finally:
        for process in processes:
            stop_worker(process)


def topic_records(settings: Settings, short_name: str, timeout_s: float = 30) -> list:
    async def go():
        topic = f"{settings.topic_prefix}.{short_name}"
        return [record async for record in read_topic(settings, topic, timeout_s)]

    return asyncio.run(go())
