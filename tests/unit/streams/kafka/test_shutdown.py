"""Bounded shutdown and the broker-warning rate limit (streams/kafka/shutdown.py)."""

import asyncio
import logging
import signal
import threading

from streams.kafka.shutdown import RepeatFilter, ShutdownDeadline, chain_signal


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def record(name="aiokafka.client", msg="Unable connect to node with id %s: %s",
           level=logging.WARNING, args=(1, "refused")):
    return logging.LogRecord(name, level, __file__, 1, msg, args, None)


def test_repeats_are_counted_and_summed_up_once_per_interval():
    clock = Clock()
    limit = RepeatFilter(30, clock=clock)
    passed = [limit.filter(record()) for _ in range(1000)]
    assert passed.count(True) == 1
    clock.now = 31
    summary = record()
    assert limit.filter(summary)
    assert "999 more like it" in summary.getMessage()


def test_other_warnings_errors_and_other_loggers_pass():
    limit = RepeatFilter(30, clock=Clock())
    assert limit.filter(record())
    assert limit.filter(record(msg="Unable to request metadata from node %s", args=(1,)))
    assert limit.filter(record(name="qlane"))
    assert limit.filter(record(name="qlane"))
    assert limit.filter(record(level=logging.INFO))
    assert limit.filter(record(level=logging.CRITICAL))
    assert not limit.filter(record())


def test_interval_zero_logs_everything():
    limit = RepeatFilter(0, clock=Clock())
    assert all(limit.filter(record()) for _ in range(10))


def test_the_deadline_exits_after_its_timeout():
    exited = threading.Event()
    codes = []

    def fake_exit(code):
        codes.append(code)
        exited.set()

    deadline = ShutdownDeadline(0.2, exit=fake_exit)
    deadline.start("SIGTERM")
    deadline.start("stop", exit_code=1)  # the first start counts
    assert exited.wait(5)
    assert codes == [0]


def test_the_deadline_chains_the_signal_handler_it_finds():
    calls = []

    async def go():
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR2, calls.append, "worker handler")
        chain_signal(loop, signal.SIGUSR2, lambda: calls.append("deadline"))
        signal.raise_signal(signal.SIGUSR2)
        await asyncio.sleep(0.05)
        loop.remove_signal_handler(signal.SIGUSR2)

    asyncio.run(go())
    assert calls == ["deadline", "worker handler"]


def test_a_stop_asked_for_runs_the_apps_hook_once_as_the_deadline_starts():
    from types import SimpleNamespace

    from streams.kafka.shutdown import stop_requested

    ran = []

    async def hook():
        ran.append("hook")

    app = SimpleNamespace(qlane_on_stop_requested=hook)
    deadline = ShutdownDeadline(60, exit=lambda code: None)

    async def go():
        stop_requested(app, deadline, "SIGTERM")
        stop_requested(app, deadline, "SIGINT")  # a second signal: the stop is under way
        await app.qlane_stop_hook_task

    asyncio.run(go())
    assert ran == ["hook"] and deadline.begun and deadline.reason == "SIGTERM"
