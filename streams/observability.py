"""The worker's `/metrics` page and the gauges that are sampled rather than counted."""

from __future__ import annotations

import logging

from streams import metrics
from streams.agents.common import in_thread
from streams.runtime import Runtime

log = logging.getLogger("qlane")

LAG_INTERVAL_S = 5.0


def register(app, runtime: Runtime) -> None:
    metrics.BUILD_INFO.info({"version": runtime.worker_version})
    lag_series: set[tuple[str, str]] = set()

    @app.task
    async def warm_up_backends():
        """Build noisy backends and their readout calibration before the first job needs
        them (noise-model conversion and calibration take seconds once per worker)."""
        def warm() -> None:
            for name in runtime.registry.names():
                backend = runtime.registry.get(name)
                if getattr(backend, "noise_model", None) is not None:
                    runtime.readout_cache.get(backend)

        try:
            await in_thread(runtime, warm)
        except Exception:
            log.exception("backend warm-up failed; jobs will build backends on first use")

    @app.page("/metrics")
    async def metrics_page(web, request):
        # aiohttp refuses a charset inside content_type; the exposition is ASCII anyway.
        media_type = "; ".join(
            part.strip() for part in metrics.CONTENT_TYPE_LATEST.split(";")
            if not part.strip().startswith("charset")
        )
        return web.bytes(metrics.render_metrics(), content_type=media_type)

    @app.timer(interval=LAG_INTERVAL_S)
    async def sample_consumer_lag():
        consumer = app.consumer
        assigned = consumer.assignment()
        stale = set(lag_series)
        for tp in assigned:
            if tp.topic not in runtime.names.all():
                continue
            try:
                position = await consumer.position(tp)
                highwater = consumer.highwater(tp)
            except Exception:  # a partition moving in a rebalance has no position yet
                continue
            if position is None or highwater is None:
                continue
            labels = (tp.topic, str(tp.partition))
            metrics.CONSUMER_LAG.labels(*labels).set(max(0, highwater - position))
            lag_series.add(labels)
            stale.discard(labels)
        for labels in stale:  # partitions this worker no longer owns
            metrics.CONSUMER_LAG.remove(*labels)
            lag_series.discard(labels)
        for backend, code in runtime.breakers.state_codes().items():
            metrics.BREAKER_STATE.labels(backend).set(code)
