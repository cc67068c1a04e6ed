"""The worker's own threads: CPU-bound work off the event loop, and backend calls there
bounded by a timeout. A thread cannot be stopped: a call past its timeout keeps its thread,
so the worker's other thread work moves to new threads (at most MAX_ABANDONED_EXECUTORS
executors left behind at once), and a backend whose call still runs takes no more of them
(streams/agents/execution.py sends its calls to the simulator process, or refuses them)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from streams.ops import metrics
from streams.runtime import Runtime
from workers.errors import BackendUnavailable

log = logging.getLogger("qlane")


async def in_thread(runtime: Runtime, function, *args):
    """Run CPU-bound work off the event loop so the worker keeps heartbeating; in a new
    worker, after its warm-up imports (streams/ops/warm_up.py)."""
    def after_imports():
        runtime.warm_ups.wait_for_imports()
        return function(*args)

    return await asyncio.get_running_loop().run_in_executor(runtime.executor, after_imports)


# Executors left to calls that ran past their timeout, at most this many at once: a thread
# cannot be stopped, and each left behind may still use a core until its call ends.
MAX_ABANDONED_EXECUTORS = 2


async def in_thread_within(runtime: Runtime, timeout: float, backends, function, *args):
    """`function(*args)` in the worker's threads, bounded by `timeout`. Past it, the worker's
    threads go on without the one still in the call: two backend calls hung past their
    timeout filled the executor, and every stage's thread work, another healthy backend's
    calls included, waited for the hang to end (113.7 s for a 0.85 s job; a red-team run).
    A call on one backend leaves it overrunning until the call ends (`overrunning`): its
    later calls do not go to the worker's threads, where a third hung call stalled every
    stage again for as long as it hung (129 s; a red-team run). A call on several backends
    (a tenant's batch) does not say which of them hung, so it marks none: its jobs then run
    one by one, and a hung backend's own call marks it. Raises BackendUnavailable for a
    backend still overrunning, whose calls have nowhere else to go."""
    if stuck := overrunning(runtime, backends):
        raise still_overrunning(stuck[0])
    backends = set(backends)
    marked = backends if len(backends) == 1 else set()
    label = next(iter(backends)) if marked else SEVERAL_BACKENDS
    ended, counted, lock = threading.Event(), threading.Event(), threading.Lock()

    def call():
        try:
            return function(*args)
        finally:
            with lock:
                ended.set()
                if counted.is_set():
                    metrics.CALLS_PAST_TIMEOUT.labels(label).dec()

    try:
        return await asyncio.wait_for(in_thread(runtime, call), timeout)
    except TimeoutError:
        with lock:
            if not ended.is_set():
                counted.set()
                metrics.CALLS_PAST_TIMEOUT.labels(label).inc()
                for backend in marked:
                    runtime.overrunning_calls.setdefault(backend, []).append(ended)
        if marked:
            log.warning("a call on %s ran past its %.3g s timeout in a worker thread: until it "
                        "ends, its calls go to the simulator process (a simulator of this "
                        "worker's own) or are refused as unavailable", label, timeout)
        else:
            log.warning("a call on %s ran past its %.3g s timeout in a worker thread",
                        ", ".join(sorted(backends)), timeout)
        abandon_executor(runtime)
        raise


# The `backend` label of qlane_calls_past_timeout for a batch call on several backends.
SEVERAL_BACKENDS = "several"


def still_overrunning(backend: str) -> BackendUnavailable:
    return BackendUnavailable(f"{backend}: an earlier call still runs past its timeout in this "
                              "worker; no new call until it ends")


def overrunning(runtime: Runtime, backends) -> list[str]:
    """Those of `backends` with a call still running past its timeout in a worker thread."""
    found = []
    for backend in backends:
        running = [ended for ended in runtime.overrunning_calls.get(backend, ())
                   if not ended.is_set()]
        if running:
            runtime.overrunning_calls[backend] = running
            found.append(backend)
        else:
            runtime.overrunning_calls.pop(backend, None)
    return found


def abandon_executor(runtime: Runtime) -> None:
    """A new executor for the worker's thread work, unless MAX_ABANDONED_EXECUTORS still run
    calls (then later work waits for them, as before)."""
    from concurrent.futures import ThreadPoolExecutor

    abandoned = [old for old in runtime.abandoned_executors
                 if any(thread.is_alive() for thread in old._threads)]
    runtime.abandoned_executors = abandoned
    if len(abandoned) >= MAX_ABANDONED_EXECUTORS:
        log.warning("a call ran past its timeout in a worker thread; %d earlier such threads "
                    "still run, so later work waits for free threads", len(abandoned))
        return
    old = runtime.executor
    runtime.executor = ThreadPoolExecutor(max_workers=old._max_workers,
                                          thread_name_prefix="qlane-exec")
    old.shutdown(wait=False)  # what it still holds ends on its own; nothing new goes there
    abandoned.append(old)
    log.warning("a call ran past its timeout in a worker thread, which cannot be stopped: "
                "later thread work goes to new threads")


def timed(function):
    """`function`, returning its result and the seconds it ran, timed in its own thread: a
    wait for a free executor thread is not in them (backend time is what a job is billed)."""
    def call(*args):
        started = time.perf_counter()
        result = function(*args)
        return result, time.perf_counter() - started

    return call

