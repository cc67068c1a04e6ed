"""A worker stops within a bounded time, and an unreachable broker does not flood its log.

Stopping a Faust worker waits for its consumer, producer and transactions, which wait for
the broker; with the broker gone they retry forever (one "Unable connect to node" warning
per retry, every few milliseconds). Two guards, installed by `install(app, settings)`:

- **Deadline.** When a stop begins (SIGTERM, SIGINT, or the app stopping on its own, e.g.
  after a crash), a watchdog thread gives it `shutdown_timeout_s`; if the process is still
  there then, it logs why and exits at once. Nothing is lost by that: offsets that were not
  committed are consumed again by the next owner, and on exactly-once the open transaction
  is aborted by the broker (or fenced by the next owner).
- **Log rate limit.** Repeats of the same warning from aiokafka's and Faust's connection
  code are counted instead of logged, and summed up in one line per
  `broker_warning_interval_s`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger("qlane")

# Loggers whose repeated warnings are about the broker connection.
NOISY_LOGGERS = ("aiokafka", "faust.transport", "kafka")


class RepeatFilter(logging.Filter):
    """Lets the first of a run of identical warnings through, then one summary per interval.

    Records are identical when they come from the same logger with the same message
    template; the arguments (a node id, an error text) may differ.
    """

    def __init__(self, interval_s: float, prefixes=NOISY_LOGGERS, clock=time.monotonic):
        super().__init__()
        self.interval_s = interval_s
        self.prefixes = tuple(prefixes)
        self.clock = clock
        self._seen: dict[tuple[str, str], list] = {}  # key -> [window start, suppressed]
        self._lock = threading.Lock()

    def _applies(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or record.levelno >= logging.CRITICAL:
            return False
        name = record.name
        return any(name == p or name.startswith(p + ".") for p in self.prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.interval_s <= 0 or not self._applies(record):
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        with self._lock:
            state = self._seen.get(key)
            if state is None or now - state[0] >= self.interval_s:
                suppressed = state[1] if state else 0
                self._seen[key] = [now, 0]
                if suppressed:
                    record.msg = f"{record.msg} (and {suppressed} more like it in the last " \
                                 f"{now - state[0]:.0f}s)"
                return True
            state[1] += 1
            return False


def install_log_filter(interval_s: float) -> RepeatFilter:
    """Put one RepeatFilter on every handler of the root logger (idempotent)."""
    root = logging.getLogger()
    for handler in root.handlers:
        for existing in handler.filters:
            if isinstance(existing, RepeatFilter):
                existing.interval_s = interval_s
                break
        else:
            handler.addFilter(RepeatFilter(interval_s))
    return next((f for h in root.handlers for f in h.filters if isinstance(f, RepeatFilter)),
                RepeatFilter(interval_s))


def install_logger_filter(interval_s: float) -> RepeatFilter:
    """One RepeatFilter on every existing aiokafka / faust.transport logger."""
    repeat = RepeatFilter(interval_s)
    for name in list(logging.Logger.manager.loggerDict):
        if any(name == p or name.startswith(p + ".") for p in NOISY_LOGGERS):
            logger = logging.getLogger(name)
            existing = [f for f in logger.filters if isinstance(f, RepeatFilter)]
            for earlier in existing:  # the latest settings' interval, as install_log_filter
                earlier.interval_s = interval_s
            if not existing:
                logger.addFilter(repeat)
    return repeat


class ShutdownDeadline:
    """Exits the process `timeout_s` after a stop began, unless it has exited by then."""

    def __init__(self, timeout_s: float, exit=os._exit, clock=time.monotonic) -> None:
        self.timeout_s = timeout_s
        self._exit = exit
        self._clock = clock
        self._started = threading.Event()
        self.reason = ""
        self.started_at: float | None = None
        self.exit_code = 0

    @property
    def begun(self) -> bool:
        return self._started.is_set()

    def start(self, reason: str, exit_code: int = 0) -> None:
        if self._started.is_set():
            return
        self.reason = reason
        self.exit_code = exit_code
        self.started_at = self._clock()
        self._started.set()
        threading.Thread(target=self._run, name="qlane-shutdown-deadline", daemon=True).start()

    def _run(self) -> None:
        time.sleep(self.timeout_s)
        message = (f"qlane worker: shutdown ({self.reason}) still not finished after "
                   f"{self.timeout_s:g}s (QLANE_SHUTDOWN_TIMEOUT_S): exiting now; whatever "
                   f"was not committed is handled again by the next owner")
        try:
            log.error(message)
            for handler in logging.getLogger().handlers:
                handler.flush()
        except Exception:  # noqa: BLE001 - exiting matters more than the log line
            pass
        print(message, file=sys.stderr, flush=True)
        self._exit(self.exit_code)


def chain_signal(loop: asyncio.AbstractEventLoop, signum: int, before) -> None:
    """Run `before()` ahead of the handler the loop already has for `signum` (the worker's)."""
    handle = getattr(loop, "_signal_handlers", {}).get(signum)
    previous = handle._callback if handle is not None else None
    previous_args = handle._args if handle is not None else ()

    def on_signal() -> None:
        before()
        if previous is not None:
            previous(*previous_args)

    loop.add_signal_handler(signum, on_signal)


def stop_requested(app, deadline: ShutdownDeadline, signal_name: str) -> None:
    """A stop asked for by a signal: the deadline starts, and the app's
    `qlane_on_stop_requested` coroutine (if any) runs once, ahead of the stop."""
    first = not deadline.begun
    deadline.start(signal_name)
    hook = getattr(app, "qlane_on_stop_requested", None)
    if first and hook is not None:
        app.qlane_stop_hook_task = asyncio.get_running_loop().create_task(hook())


def install(app, settings) -> ShutdownDeadline:
    """Arm the deadline and the log filter in a Faust worker (a task that runs at start)."""
    deadline = ShutdownDeadline(settings.shutdown_timeout_s)
    app.qlane_shutdown_deadline = deadline
    # On the loggers themselves right away (a broker can vanish while the worker starts),
    # and on the handlers once the worker has set up logging (loggers created later).
    install_logger_filter(settings.broker_warning_interval_s)

    @app.task
    async def guard_shutdown():
        install_log_filter(settings.broker_warning_interval_s)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            name = signal.Signals(signum).name
            chain_signal(loop, signum, lambda name=name: stop_requested(app, deadline, name))
        # A stop that does not come from a signal (a crash) gets the same bound. The app
        # cancels this task when it stops: the deadline starts then at the latest.
        try:
            while not app.should_stop:
                await asyncio.sleep(0.2)
        finally:
            crashed = getattr(app, "crash_reason", None) is not None
            deadline.start("crash" if crashed else "stop", exit_code=1 if crashed else 0)

    return deadline
