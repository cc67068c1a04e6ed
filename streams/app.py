"""The Faust app: topics, the workflow table and the three stage agents."""

from __future__ import annotations

import functools
import logging

from streams.agents import execute, mitigate, preprocess, variational
from streams.kafka import flow, record_batches, recovery, shutdown, stable_offsets, transport
from streams.kafka.security import KAFKA_METADATA_MAX_AGE_MS, faust_credentials
from streams.kafka.topics import WORKFLOW_TABLE, TopicNames, job_topics, raw_topic
from streams.ops import observability
from streams.runtime import Runtime
from streams.settings import Settings
from streams.workflow import control, poison, table_store
from workers.circuits.parsing import load_qasm3_parser

log = logging.getLogger("qlane")


def broker_urls(bootstrap: str) -> list[str]:
    return [f"{transport.SCHEME}://{server.strip()}" for server in bootstrap.split(",")]


def faust_settings(settings: Settings) -> dict:
    options = dict(
        broker=broker_urls(settings.broker),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor or 1,
        consumer_auto_offset_reset="earliest",
        web_enabled=settings.web_enabled,
        web_port=settings.web_port,
        web_host=settings.web_host,
        web_bind=settings.web_host,
        # A workflow's table entry (its error text quotes the program) for anyone who asks,
        # and the workers' addresses: not served (a red-team run). `/` and `/metrics` are.
        web_tables_enabled=False,
        web_router_enabled=False,
        # Short sessions make a dead worker's partitions move in seconds, not minutes.
        broker_session_timeout=6,
        broker_heartbeat_interval=1,
        processing_guarantee=settings.effective_processing_guarantee,
        broker_commit_interval=settings.commit_interval_s,
        broker_max_poll_records=settings.max_poll_records,
        stream_buffer_maxsize=settings.stream_buffer_max,
        # Partitions added to a topic, or a topic deleted and created again, are seen at the
        # consumer's next metadata refresh: 5 minutes by default, when nothing was consumed
        # from a recreated jobs topic for 300 s (a red-team run). One small request per 30 s.
        consumer_metadata_max_age_ms=30_000,
        TableManager=recovery.TableManager,
        producer_max_request_size=settings.record_max_bytes,
    )
    options.update(faust_credentials(settings))
    options.update(table_store.faust_store_settings(settings))
    if settings.profile == "kafka":
        # A frozen broker (a stopped JVM, a long GC pause) takes connections and never
        # answers: each request to it waited Faust's 1,200 s (producer) or 90 s, one after
        # another, while KRaft had moved its leaders after 9 s; and metadata naming the new
        # leaders came every 30 s (docs/reliability.md, "A frozen broker").
        options["producer_request_timeout"] = settings.kafka_request_timeout_s
        options["broker_request_timeout"] = settings.kafka_request_timeout_s
        options["producer_metadata_max_age_ms"] = KAFKA_METADATA_MAX_AGE_MS
        options["consumer_metadata_max_age_ms"] = KAFKA_METADATA_MAX_AGE_MS
    if settings.profile == "embedded":
        # Tansu's ListOffsets end offsets are wrong for multi-record batches, which makes
        # table recovery miss updates; one record per batch keeps recovery exact.
        options["producer_max_batch_size"] = 1
    return options


def create_app(settings: Settings | None = None) -> tuple[flow.App, Runtime]:
    settings = settings or Settings()
    load_qasm3_parser()  # before the warm-up and stage threads import it at once
    stable_offsets.install()
    app = flow.App(settings.app_id, **faust_settings(settings))
    app.qlane_fetch_max_wait_ms = settings.effective_fetch_max_wait_ms
    app.qlane_profile = settings.profile
    app.qlane_web_limits = (settings.web_max_connections, settings.web_idle_timeout_s)
    app.qlane_transaction_timeout_ms = int(settings.transaction_timeout_s * 1000)
    app.qlane_idle_commit_s = settings.idle_commit_s
    app.qlane_transaction_linger_s = settings.effective_transaction_linger_s
    shutdown.install(app, settings)
    record_batches.install(settings.max_uncompressed_batch_mb * record_batches.MIB,
                           settings.max_held_records_mb * record_batches.MIB)
    names = TopicNames.from_settings(settings)
    runtime = Runtime(settings=settings, names=names, app=app)
    # A stop asked for does not count against the records in a backend call.
    app.qlane_on_stop_requested = functools.partial(poison.withdraw_in_flight_marks, runtime)
    for short_name, topic_name in vars(names).items():
        runtime.topics[short_name] = raw_topic(app, topic_name, partitions=settings.partitions)
    # Priority lanes: one channel per lane over the shared and every tenant's job topics of
    # that lane (an explicit list, see README "Topics, tenants and lanes").
    for lane, lane_topics in job_topics(settings.topic_prefix, settings.tenants).items():
        runtime.lane_channels[("jobs", lane)] = raw_topic(
            app, *lane_topics, partitions=settings.partitions)
    # No key/value types: Faust then (de)serializes plain JSON. A builtin type such as
    # `dict` here breaks changelog recovery (Faust calls `dict.from_data`).
    table = table_store.workflow_table(app, WORKFLOW_TABLE, partitions=settings.partitions,
                                       options=table_store.table_options(settings))
    for stage in (preprocess, execute, mitigate, variational):
        stage.register(app, runtime, table)
    observability.register(app, runtime)
    control.register(app, runtime)

    @app.task
    async def warm_up():
        if settings.warm_ups:
            runtime.warm_ups.start()
        else:
            log.info("warm-ups off: each step is done where it is first needed")

    return app, runtime
