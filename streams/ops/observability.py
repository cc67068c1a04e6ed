"""The worker's `/metrics` page and the gauges that are sampled rather than counted."""

from __future__ import annotations

import asyncio
import logging
import time

from streams.kafka.topics import job_topics
from streams.ops import metrics
from streams.runtime import Runtime
from workers.backends.base import import_installed_sdks

log = logging.getLogger("qlane")

LAG_INTERVAL_S = 5.0
BROKER_CALL_TIMEOUT_S = 2.0
MARKER_SLACK = 2  # transaction markers a caught-up partition may have left behind its records


def register(app, runtime: Runtime) -> None:
    metrics.BUILD_INFO.info({"version": runtime.worker_version})
    lag_series: set[tuple[str, str]] = set()
    metrics.ASSIGNMENT_PENDING.set_function(app.assignment_pending_s)  # read at each scrape

    def warm_up_backends() -> None:
        """Build noisy backends and their readout calibration before the first job needs
        them (noise-model conversion and calibration take seconds once per worker). A step
        of the worker's one warm-up thread (streams/ops/warm_up.py): in a thread of its own it
        shared the interpreter with the mitiq import and slowed both."""
        for name in runtime.registry.names():
            backend = runtime.registry.get(name)
            if getattr(backend, "noise_model", None) is not None:
                runtime.readout_cache.get(backend)

    runtime.warm_ups.add_import("vendor SDKs", import_installed_sdks)
    runtime.warm_ups.add("backends", warm_up_backends)

    @app.page("/metrics")
    async def metrics_page(web, request):
        # aiohttp refuses a charset inside content_type; the exposition is ASCII anyway.
        media_type = "; ".join(
            part.strip() for part in metrics.CONTENT_TYPE_LATEST.split(";")
            if not part.strip().startswith("charset")
        )
        return web.bytes(metrics.render_metrics(), content_type=media_type)

    # Every topic the worker reads: the shared ones and each configured tenant's job topics
    # (those had no series, so a tenant's backlog could fire no lag alert: a red-team run).
    read_topics = set(runtime.names.all()).union(*job_topics(
        runtime.settings.topic_prefix, runtime.settings.tenants).values())

    answered = {"at": time.monotonic()}  # the broker's last answer to a log-end lookup

    @app.timer(interval=LAG_INTERVAL_S)
    async def sample_consumer_lag():
        consumer = app.consumer
        assigned = consumer.assignment()
        stale = set(lag_series)
        ours = [tp for tp in assigned if tp.topic in read_topics]
        # Lag as Kafka's tools count it: log end minus committed offset. The fetch position
        # is not enough: records fetched into a stream buffer but not finished (brokers
        # gone, outputs that cannot be written) would count as done. A partition without a
        # committed offset here (just assigned, or never committed) counts from its fetch
        # position, where the assignment sought it: the group's committed offset, or the
        # partition's start. From its first offset, a partition the group had committed
        # read every record it ever held during a rebalance (lag 23,207 for about 6,860
        # jobs left: a red-team run). Without either it keeps its last value. Broker calls
        # are bounded: when the partition leaders are gone they would hang.
        try:
            positions = await asyncio.wait_for(
                consumer._thread.positions(ours), BROKER_CALL_TIMEOUT_S)  # noqa: SLF001
        except TimeoutError:
            positions = {}
        done = {}
        # A partition the group never committed counts from its start: from the fetch
        # position, records fetched into a stream buffer and not handled counted as done,
        # and a first backlog of 3,741 records read 1,266, whole partitions 0 for 16 s (a
        # red-team run).
        fresh = {tp for tp in ours if consumer._committed_offset.get(tp) is None
                 and tp in getattr(consumer, "never_committed", ())}
        starts = {}
        delivered = getattr(getattr(consumer, "_thread", None), "qlane_delivered", {})
        if fresh:
            try:
                starts = await asyncio.wait_for(consumer.earliest_offsets(*fresh),
                                                BROKER_CALL_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a rebalance, no broker to ask: as before
                starts = {}
        for tp in ours:
            offset = consumer._committed_offset.get(tp)
            if offset is None and isinstance(starts.get(tp), int):
                offset = starts[tp]
            elif offset is None and isinstance(positions.get(tp), int):
                offset = positions[tp]  # an error where a rebalance moves the partition
            done[tp] = offset
        # A read_committed reader's committed offset stops short of the log end at rest
        # (the transaction markers after the last records): a partition fetched to its end
        # with nothing unfinished and no more than that left has no lag. Fetched to its end
        # is not enough alone: records fetched and not yet handed to a stage are neither
        # acked nor unacked, and a partition 1,004 records behind read 0 (a red-team run).
        unfinished = {message.tp for message in list(consumer._unacked_messages)}
        unfinished.update(tp for tp, acked in consumer._acked.items() if acked)
        # The log ends from the broker (the last stable offsets on read_committed): the
        # consumer's own highwater is the one of its last fetch of a partition, stale for
        # one paused by flow control or the lanes; with the fetch position at it, a
        # partition 563 records behind read 0 (a red-team run, a 10,000-job backlog).
        try:
            ends = await asyncio.wait_for(consumer.highwaters(*ours), BROKER_CALL_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - a rebalance, no broker to ask: the fetch's value
            ends = None
        # With the broker gone and nothing waiting, the lag stays 0 and no other alert can
        # fire: how long the broker has not answered, for QlaneBrokerUnreachable (a
        # red-team run: 10 minutes of outage, no alert). Holding nothing, there is no one
        # to ask.
        if ends is not None or not ours:
            answered["at"] = time.monotonic()
            metrics.BROKER_UNANSWERED.set(0)
        else:
            metrics.BROKER_UNANSWERED.set(round(time.monotonic() - answered["at"], 1))
        ends = ends or {}
        for tp in ours:
            try:
                highwater = ends.get(tp)
                if highwater is None:
                    highwater = consumer.highwater(tp)
            except Exception:  # a partition moving in a rebalance
                continue
            if done.get(tp) is None or highwater is None:
                stale.discard((tp.topic, str(tp.partition)))  # its last value, if any
                continue
            position = positions.get(tp)
            caught_up = isinstance(position, int) and position >= highwater
            lag = max(0, highwater - done[tp])
            if caught_up and tp not in unfinished and (
                    lag <= MARKER_SLACK or (tp in fresh and not delivered.get(tp))):
                # Only the last transactions' markers are left; or, in a partition the group
                # never committed, nothing it could read: counted from its start, 2,000
                # aborted records read 2,001 at rest for good (a red-team run).
                lag = 0
            labels = (tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(lag)
            lag_series.add(labels)
            stale.discard(labels)
        for labels in stale:  # partitions this worker no longer owns
            metrics.CONSUMER_LAG.remove(*labels)
            lag_series.discard(labels)
        for backend, code in runtime.breakers.state_codes().items():
            metrics.BREAKER_STATE.labels(backend).set(code)
