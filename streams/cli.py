"""`qlane`: the command line of qlane (see README.md for every command)."""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import logging
import sys
import time
from pathlib import Path

from streams.kafka import record_batches
from streams.kafka.compat import assign_settled, start_or_close, stop_consumer, topic_partitions
from streams.kafka.security import client_options
from streams.ops.logs import printable
from streams.settings import Settings

TOPIC_SCHEMAS = {
    "jobs": "JobRequest",
    "stage.execute": "ExecuteTask",
    "stage.mitigate": "MitigateTask",
    "stage.variational": "JobRequest",
    "results": "JobResult",
    "cost": "CostEvent",
    "drift": "DriftEvent",
    "status": "JobStatus",
}


def schema_of_record(prefix: str, topic: str, value: bytes | None) -> str | None:
    """The record type of a record of `topic`: a job topic carries JobCancels beside
    JobRequests (`qlane dlq show` called a cancel's dead letter "undecodable"; a red-team
    run)."""
    from streams.workflow.cancel import is_cancel

    schema = schema_of_topic(prefix, topic)
    return "JobCancel" if schema == "JobRequest" and is_cancel(value) else schema


def schema_of_topic(prefix: str, topic: str) -> str | None:
    """The record type a qlane topic holds, for every tenant and lane of it: job topics and
    the execute stage's lanes as the shared ones, a tenant's results, status and cost topics
    as the shared ones."""
    from streams.kafka.tenants import TENANT_COPIES
    from streams.kafka.topics import parse_job_topic

    if parse_job_topic(prefix, topic) is not None:
        return "JobRequest"
    short = topic.removeprefix(f"{prefix}.")
    if short in TOPIC_SCHEMAS:
        return TOPIC_SCHEMAS[short]
    if short in ("stage.execute-high", "stage.execute-low"):
        return "ExecuteTask"
    kind, _, tenant = short.partition(".")
    return TOPIC_SCHEMAS[kind] if tenant and kind in TENANT_COPIES else None


def settings_from(args: argparse.Namespace, detect: bool = True) -> Settings:
    """The command's settings; with `detect`, the profile of the broker at the default
    address asked of the broker itself (`detect_profile`)."""
    overrides = {}
    if getattr(args, "broker", None):
        overrides["broker"] = args.broker
    if getattr(args, "profile", None):
        overrides["profile"] = args.profile
    if getattr(args, "topic_prefix", None):
        overrides["topic_prefix"] = args.topic_prefix
    if getattr(args, "partitions", None):
        overrides["partitions"] = args.partitions
    settings = Settings(**overrides)
    if detect and settings.profile_unsure:
        from streams.kafka.security import detect_profile

        settings = asyncio.run(detect_profile(settings))
    # The command's own readers (tail, dlq, replay) meet the same batches as the workers.
    record_batches.install(settings.max_uncompressed_batch_mb * record_batches.MIB)
    return settings


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", help="bootstrap servers host:port (env QLANE_BROKER)")
    parser.add_argument(
        "--profile", choices=["embedded", "kafka"],
        help="embedded = tuned for Tansu (default without --broker); kafka = Apache Kafka "
             "(env QLANE_PROFILE)",
    )
    parser.add_argument("--topic-prefix",
                        help="topic name prefix (env QLANE_TOPIC_PREFIX, else qlane)")
    parser.add_argument("--partitions", type=int,
                        help="partitions per topic (env QLANE_PARTITIONS, else 4)")


# --- commands -------------------------------------------------------------------------
class _Stop(Exception):
    """Raised in the main thread by SIGTERM or SIGHUP, as Ctrl-C raises KeyboardInterrupt."""


def _raise_stop(signum, frame):
    raise _Stop(signum)


def run_in_foreground(start, is_running, stop) -> None:
    """Run `start()`, then wait while `is_running()`; on Ctrl-C, SIGTERM or SIGHUP, also
    during `start()`, call `stop()` and return. The handlers are in place before `start()`,
    so a signal sent right after it announced readiness stops the command cleanly."""
    import signal

    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        start()
        while is_running():
            time.sleep(0.2)
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        # A second signal during stop() must not interrupt it half-way.
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cmd_broker(args: argparse.Namespace) -> int:
    from streams.brokers.tansu import EmbeddedBroker

    broker = EmbeddedBroker(port=args.port)

    def start() -> None:
        broker.start()
        print(f"embedded Tansu broker listening on {broker.bootstrap} (memory storage); "
              "Ctrl-C or SIGTERM stops", flush=True)

    run_in_foreground(start, lambda: broker.process.poll() is None, broker.stop)
    return 0


def cmd_kafka(args: argparse.Namespace) -> int:
    from streams.brokers.kafka_local import KafkaCluster, KafkaStartError

    cluster = KafkaCluster(nodes_count=args.nodes, version=args.version, port=args.port,
                           data_dir=Path(args.data) if args.data else None)
    if args.sasl:
        from streams.brokers.kafka_security import enable_sasl_ssl

        # PORT+100 as the help says (a free port was chosen: a red-team run); --port 0: free.
        secured = enable_sasl_ssl(cluster, sasl_port=args.port + 100 if args.port else 0)

    def start() -> None:
        started = time.monotonic()
        cluster.start()
        print(f"Apache Kafka {args.version} ({args.nodes} KRaft node(s)) ready in "
              f"{time.monotonic() - started:.1f}s; data in {cluster.data_dir}", flush=True)
        print(f"bootstrap servers: {cluster.bootstrap}", flush=True)
        if args.sasl:
            print(secured.describe(), flush=True)
        print("Ctrl-C or SIGTERM stops every node", flush=True)

    lost: set[int] = set()

    def running() -> bool:
        """While any node lives: a cluster of 3 (RF 3, min ISR 2) is meant to outlive one
        node; stopping every node when one died took the whole cluster down (a red-team
        run). A lost node is not restarted (KafkaCluster.restart_node does that in tests)."""
        for node in cluster.nodes:
            if not node.alive and node.node_id not in lost:
                lost.add(node.node_id)
                print(f"Kafka node {node.node_id} exited "
                      f"({node.process.returncode if node.process else '?'}); "
                      f"{sum(n.alive for n in cluster.nodes)} of {len(cluster.nodes)} left",
                      file=sys.stderr, flush=True)
        return any(node.alive for node in cluster.nodes)

    try:
        run_in_foreground(start, running, cluster.stop)
    except KafkaStartError as error:
        print(f"qlane kafka: {error}", file=sys.stderr)
        return 1
    return 0


def use_event_loop(kind: str) -> None:
    """Before the app exists: Faust's worker takes the loop the policy makes."""
    if kind != "uvloop":
        return
    try:
        import uvloop
    except ImportError:
        logging.getLogger("qlane").warning("QLANE_EVENT_LOOP=uvloop but uvloop is not "
                                           "installed: the worker runs asyncio's own loop")
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_worker(args: argparse.Namespace) -> int:
    from faust import Worker

    from streams.app import create_app
    from streams.kafka.topics import ensure_topics
    from streams.ops.logs import keep_records_on_one_line, logging_config

    keep_records_on_one_line()
    settings = settings_from(args)
    updates = {}
    if args.without_web:
        updates["web_enabled"] = False
    if args.web_port:
        updates["web_port"] = args.web_port
    settings = settings.model_copy(update=updates)
    if settings.profile_unsure:
        print(f"profile {settings.profile} (asked of the broker at {settings.broker}; "
              "--profile to choose)", file=sys.stderr)
    from streams.kafka.security import AccessRefused, broker_unavailable, preflight
    from streams.kafka.topic_checks import TopicLayoutMismatch
    from streams.kafka.topics import PartitionCountMismatch, TopicsNotCreated

    try:  # a refused login, a missing ACL or topics that break idempotency: the reason, exit
        created = asyncio.run(preflight(settings, ensure_topics))
        settings = asyncio.run(fit_record_limit(settings))
    except (AccessRefused, PartitionCountMismatch, TopicLayoutMismatch,
            TopicsNotCreated, RecordLimitTooSmall) as error:
        print(f"qlane worker: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if not broker_unavailable(error):
            raise
        print(f"qlane worker: the cluster did not answer the start-up checks within "
              f"QLANE_STARTUP_BROKER_WAIT_S ({settings.startup_broker_wait_s:.0f}s): "
              f"{error_text(error)}", file=sys.stderr)
        return 1
    if created:
        print(f"created topics: {', '.join(created)}", file=sys.stderr)
    use_event_loop(settings.event_loop)
    app, _ = create_app(settings)
    level = args.loglevel or settings.log_level
    log_format = args.log_format or settings.log_format
    worker = Worker(app, loglevel=level, logging_config=logging_config(log_format, level))
    # Qiskit logs every transpiler pass at INFO; only its warnings belong in a worker log.
    logging.getLogger("qiskit").setLevel(logging.WARNING)
    worker.execute_from_commandline()
    return 0


class RecordLimitTooSmall(Exception):
    """A topic the worker writes takes records too small for it to run."""


async def fit_record_limit(settings):
    """The settings with `record_max_bytes` within what the broker takes on every topic the
    worker writes (streams/kafka/topic_checks.py `written_record_limit`); RecordLimitTooSmall
    below MIN_RECORD_BYTES (a changelog limited to 1,200 bytes made a worker that started,
    took jobs and stopped at the first, at every start; a red-team run)."""
    from streams.kafka.topic_checks import RECORD_BATCH_OVERHEAD_BYTES, written_record_limit
    from streams.kafka.topics import qlane_topics
    from streams.settings import MIN_RECORD_BYTES

    fitted = await written_record_limit(settings, qlane_topics(settings))
    if fitted is None or fitted[0] >= settings.record_max_bytes:
        return settings
    limit, topic = fitted
    if limit < MIN_RECORD_BYTES:
        raise RecordLimitTooSmall(
            f"{topic} takes records of at most {limit + RECORD_BATCH_OVERHEAD_BYTES} bytes "
            f"(max.message.bytes); a worker needs at least "
            f"{MIN_RECORD_BYTES + RECORD_BATCH_OVERHEAD_BYTES}: raise it")
    print(f"records are limited to {limit} bytes, not {settings.record_max_bytes}: "
          f"max.message.bytes of {topic} allows no more", file=sys.stderr)
    return settings.model_copy(update={"record_max_bytes": limit})


def build_submission(args: argparse.Namespace) -> dict:
    from streams.client import job_request, load_job_file
    from streams.client.kafka import new_workflow_id, read_source
    from workers.jobs import parse_observable

    path = Path(args.path)
    if path.suffix in (".yaml", ".yml", ".json"):
        fields = load_job_file(path)
    else:
        fields = {"circuit": read_source(path)}
    if args.shots is not None:
        fields["shots"] = args.shots
    if args.backend:
        fields["backend"] = args.backend
    if args.workflow_id is not None:  # "" too: an unset shell variable is no fresh id
        fields["workflow_id"] = args.workflow_id
    if args.observable:
        fields["observables"] = [
            {"terms": [{"pauli": t.pauli, "coeff": t.coeff} for t in parse_observable(o).terms]}
            for o in args.observable
        ]
    if args.param_set:
        fields["parameter_sets"] = [
            [float(v) for v in text.split(",") if v.strip()] for text in args.param_set
        ]
    tenant = getattr(args, "tenant", None)
    if tenant is not None:
        if fields.get("tenant") not in (None, tenant):
            raise ValueError(f"the job's tenant {fields['tenant']!r} is not --tenant {tenant!r}")
        fields["tenant"] = tenant
        fields.setdefault("workflow_id", f"{tenant}.{new_workflow_id()}")
    return job_request(**fields)


def cmd_submit(args: argparse.Namespace) -> int:
    from streams.client.errors import BrokerTimeout
    from streams.client.kafka import encoded_request, own_ids
    from streams.client.render import json_line, result_table
    from streams.client.timeouts import Deadline, delivered, open_client
    from streams.kafka.topics import job_topic, lane_for_priority

    settings = settings_from(args)
    record = build_submission(args)
    encoded_request(record)  # refused before connecting: a seed, a field of the wrong type
    workflow_id = record["workflow_id"]
    lane = lane_for_priority(record.get("priority") or 0)
    own_ids(settings, job_topic(settings.topic_prefix, args.tenant, lane), workflow_id)

    def show(outcome, event: str) -> None:
        print(f"  {workflow_id}: {event}", file=sys.stderr)

    async def go() -> int:
        # Every step within --timeout: aiokafka's own waits (40 s a request, then again)
        # held `submit --wait --timeout 20` for 91 s on a cluster without a quorum.
        deadline = Deadline(args.timeout)
        async with open_client(settings, args.tenant, deadline, watch=args.wait) as client:
            # A tenant's principal may write its own job topics only (README "Tenants").
            to = client.jobs_topic(args.tenant, lane) if args.tenant else None
            try:
                topic = await delivered(functools.partial(client.submit, record, to),
                                        deadline, f"submitting {workflow_id}")
            except BrokerTimeout as error:
                raise BrokerTimeout(f"{error}; {workflow_id} may or may not have been sent: "
                                    "submitting it again with the same id is safe") from None
            print(f"submitted {workflow_id} to {topic}", file=sys.stderr)
            if not args.wait:
                return 0
            outcome = (await client.wait([workflow_id], deadline.left(), show))[workflow_id]
        if outcome.result is not None:
            print(json_line(outcome.result) if args.json else result_table(outcome.result))
        if outcome.state == "done":
            return 0
        print(printable(f"{workflow_id}: {outcome.state} {outcome.detail}"), file=sys.stderr)
        return 1

    return asyncio.run(go())


def full_topic_name(settings, name: str) -> str:
    """A topic by its full name or its short one: `results`, `stage.execute`, and a tenant's
    `status.acme` or `jobs.acme-high`."""
    from streams.kafka.topics import TopicNames

    topic = TopicNames.from_settings(settings).by_short_name(name)
    prefixed = f"{settings.topic_prefix}.{name}"
    if (topic == name and not topic.startswith(f"{settings.topic_prefix}.")
            and schema_of_topic(settings.topic_prefix, prefixed) is not None):
        return prefixed
    return topic


def cmd_tail(args: argparse.Namespace) -> int:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from schemas.codec import codec
    from streams.client import decode_dlq_headers
    from streams.client.kafka import shown_headers
    from streams.client.render import json_line
    from streams.workflow.cancel import is_cancel

    settings = settings_from(args)
    topic = full_topic_name(settings, args.topic)
    short = topic.removeprefix(f"{settings.topic_prefix}.")
    schema = schema_of_topic(settings.topic_prefix, topic)

    def describe(record) -> dict:
        line = {"topic": record.topic, "partition": record.partition, "offset": record.offset,
                "timestamp_ms": record.timestamp,
                "key": (record.key or b"").decode(errors="replace")}
        if short == "deadletter":
            line["headers"] = shown_headers(record.headers)
            source = decode_dlq_headers(record.headers).get("qlane.dlq.source.topic", "")
            source_schema = schema_of_record(settings.topic_prefix, source, record.value)
            try:
                line["value"] = codec(source_schema).decode(record.value)
            except Exception:
                line["value"] = record.value or b""
        elif schema:
            try:
                # A job topic carries JobCancels beside JobRequests (every high lane).
                shown = "JobCancel" if schema == "JobRequest" and is_cancel(record.value) \
                    else schema
                line["value"] = codec(shown).decode(record.value)
            except Exception as error:
                line["undecodable"] = f"{type(error).__name__}: {error}"
                line["value"] = record.value or b""
        else:
            line["value"] = record.value or b""
        return line

    async def go() -> int:
        # read_committed on Kafka, as every reader of qlane's outcomes must: read
        # uncommitted, a worker killed mid-transaction showed a result, a cost and a `done`
        # twice, the aborted copies beside the committed ones (a red-team run).
        consumer = AIOKafkaConsumer(**client_options(settings), group_id=None,
                                    enable_auto_commit=False,
                                    isolation_level=settings.isolation_level)
        await start_or_close(consumer)
        try:
            partitions = [TopicPartition(topic, p)
                          for p in sorted(await topic_partitions(consumer, topic))]
            if not partitions:
                # With ACLs, a topic this principal may not describe is not listed to it.
                print(f"no such topic, or this principal may not read it: {topic}",
                      file=sys.stderr)
                return 1
            await assign_settled(consumer, partitions)
            if args.from_beginning:
                await consumer.seek_to_beginning(*partitions)
            else:
                await consumer.seek_to_end(*partitions)
            printed = 0
            deadline = time.monotonic() + args.timeout if args.timeout else None
            while deadline is None or time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=300)
                for records in batch.values():
                    for record in records:
                        print(json_line(describe(record)), flush=True)
                        printed += 1
                        if args.max and printed >= args.max:
                            return 0
            return 0
        finally:
            await stop_consumer(consumer)

    try:
        return asyncio.run(go())
    except KeyboardInterrupt:
        return 0


def parse_time_ms(text: str | None) -> int | None:
    """Epoch milliseconds, or an ISO 8601 time (UTC when it names no zone); argparse's
    error (a usage message, exit 2) for anything else."""
    if text is None:
        return None
    if text.isdigit():
        return int(text)
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither epoch milliseconds nor an ISO 8601 time ({error})") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def empty_range(args: argparse.Namespace) -> str | None:
    """Why the replay's offsets or times select nothing whatever the topic holds, or None."""
    for name in ("from_offset", "to_offset"):
        if (value := getattr(args, name)) is not None and value < 0:
            return f"--{name.replace('_', '-')} {value}: offsets start at 0"
    if None not in (args.from_offset, args.to_offset) and args.from_offset > args.to_offset:
        return (f"--from-offset {args.from_offset} is past --to-offset {args.to_offset} "
                "(inclusive): nothing to select")
    if None not in (args.from_time, args.to_time) and args.from_time > args.to_time:
        return "--from-time is later than --to-time: nothing to select"
    return None


def cmd_replay(args: argparse.Namespace) -> int:
    from streams.client.replay import ReplaySelection, replay
    from streams.kafka.topics import TopicNames

    if problem := empty_range(args):
        # `--from-offset 50 --to-offset 10` printed "0 selected" and exited 0 (a red-team run).
        print(f"qlane replay: {problem}", file=sys.stderr)
        return 2
    settings = settings_from(args)
    selection = ReplaySelection(
        topic=full_topic_name(settings, args.topic),
        partitions=args.partition,
        from_offset=args.from_offset,
        to_offset=args.to_offset,
        from_time_ms=args.from_time,
        to_time_ms=args.to_time,
        keys={key.encode() for key in args.key or ()},
        error_classes=set(args.error_class or ()),
    )
    verb = "would replay" if args.dry_run else "replay"
    if args.error_class and selection.topic != TopicNames.from_settings(settings).deadletter:
        # Only dead letters carry the class: 0 selected, without a word (a red-team run).
        print(f"qlane replay: --error-class selects dead letters; {selection.topic} is not the "
              "dead-letter topic, so nothing matches", file=sys.stderr)

    def report(item) -> None:
        if isinstance(item, str):
            print(printable(item), file=sys.stderr)
            return
        key = printable((item.key or b"").decode(errors="replace"))
        note = f"  ({printable(item.note)})" if item.note else ""
        print(f"{verb} {item.source} -> {item.target_topic} key={key}{note}")

    target = full_topic_name(settings, args.to) if args.to else None
    try:
        summary = asyncio.run(replay(settings, selection, target=target,
                                     rerun=args.rerun or args.rerun_label is not None,
                                     rerun_label=args.rerun_label or "", rate_per_s=args.rate,
                                     dry_run=args.dry_run, report=report))
    except KeyboardInterrupt:
        print(f"interrupted: the `{verb}` lines above were delivered; replay the same selection "
              "again for the rest (delivered ones are acknowledged duplicates)", file=sys.stderr)
        return 130
    targets = ", ".join(f"{n} to {t}" for t, n in summary.by_target.items()) or "nothing"
    done = "planned" if args.dry_run else "replayed"
    failed = f", {summary.failed} FAILED (not delivered; replay them again)" \
        if summary.failed else ""
    print(f"{summary.selected} selected, {summary.replayed} {done} ({targets}), "
          f"{summary.skipped} skipped{failed}", file=sys.stderr)
    return 1 if summary.failed else 0


def cmd_dlq(args: argparse.Namespace) -> int:
    from schemas.codec import codec
    from streams.client import decode_dlq_headers
    from streams.client.kafka import shown_headers
    from streams.client.render import json_line
    from streams.client.replay import ReplaySelection, select_records
    from streams.kafka.topics import TopicNames

    settings = settings_from(args)
    names = TopicNames.from_settings(settings)
    selection = ReplaySelection(topic=names.deadletter,
                                error_classes=set(getattr(args, "error_class", None) or ()))
    if args.action == "show":
        partition, _, offset = args.where.partition(":")
        if partition.isdigit() and offset.isdigit():
            selection.partitions = [int(partition)]
            selection.from_offset = selection.to_offset = int(offset)
        else:  # a workflow id, which may hold a colon itself
            selection.keys = {args.where.encode()}

    if args.action == "list":
        async def listed() -> tuple[collections.deque, int]:
            # One line per dead letter, the last `--max` of them: holding the records, a
            # listing of one line held every dead letter's value (330 MB for 205 of 900 KB;
            # a red-team run).
            lines: collections.deque = collections.deque(maxlen=args.max or None)
            count = 0
            async for record in select_records(settings, selection):
                count += 1
                lines.append(dead_letter_line(record, decode_dlq_headers(record.headers)))
            return lines, count

        lines, count = asyncio.run(listed())
        print(f"{'partition:offset':<17} {'time (UTC)':<19} {'stage':<10} {'error':<20} "
              f"{'att':>3}  key / message")
        for line in lines:
            print(line)
        print(f"{count} dead letters", file=sys.stderr)
        return 0

    async def records():
        return [record async for record in select_records(settings, selection)]

    found = asyncio.run(records())
    if not found:
        print(f"no dead letter at {args.where}", file=sys.stderr)
        return 1
    for record in found:
        headers = decode_dlq_headers(record.headers)
        source = headers.get("qlane.dlq.source.topic", "")
        schema = schema_of_record(settings.topic_prefix, source, record.value)
        try:
            value = codec(schema).decode(record.value) if schema else record.value
        except Exception as error:
            value = {"undecodable": f"{type(error).__name__}: {error}", "bytes": record.value}
        print(json_line({"partition": record.partition, "offset": record.offset,
                         "timestamp_ms": record.timestamp,
                         "key": (record.key or b"").decode(errors="replace"),
                         "headers": shown_headers(record.headers), "value": value}))
    return 0


def dead_letter_line(record, headers: dict[str, str]) -> str:
    """One dead letter as a line of `qlane dlq list`. Keys and messages come from producers:
    escaped, they cannot move the cursor, clear the line or set the terminal's title (a
    red-team run)."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.timestamp / 1000))
    key = (record.key or b"").decode(errors="replace")
    return printable(f"{record.partition}:{record.offset:<15} {when:<19} "
                     f"{headers.get('qlane.dlq.stage', ''):<10} "
                     f"{headers.get('qlane.dlq.error.class', ''):<20} "
                     f"{headers.get('qlane.dlq.attempts', ''):>3}  {key or '-'}: "
                     f"{headers.get('qlane.dlq.error.message', '')[:70]}")


def cmd_control(args: argparse.Namespace) -> int:
    from aiokafka import AIOKafkaProducer

    from streams.kafka.topics import TopicNames
    from streams.workflow.control import noise_control_record
    from workers.backends.registry import ENTRIES

    entry = ENTRIES.get(args.backend)
    if entry is None or not entry.scalable:
        scalable = ", ".join(sorted(name for name, e in ENTRIES.items() if e.scalable))
        print(f"qlane control noise: {printable(args.backend)} has no calibrated noise model "
              f"qlane can scale; these have: {scalable}", file=sys.stderr)
        return 2
    try:
        key, value = noise_control_record(args.backend, args.scale)
    except ValueError as error:
        # Sent, every worker ignored it as malformed, and this said the scale was set to nan
        # (a red-team run).
        print(f"qlane control noise: {error}", file=sys.stderr)
        return 2
    settings = settings_from(args)
    topic = TopicNames.from_settings(settings).control

    async def go():
        producer = AIOKafkaProducer(**client_options(settings), acks="all")
        await start_or_close(producer)
        try:
            await producer.send_and_wait(topic, value=value, key=key)
        finally:
            await producer.stop()

    asyncio.run(go())
    print(f"noise scale of {args.backend} set to {args.scale} on every worker (via {topic})")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from streams.client.commands import cancel_workflow

    answer = asyncio.run(cancel_workflow(settings_from(args), args.workflow_id, args.tenant,
                                         args.reason, args.timeout))
    print(printable(answer.line()))
    return 0 if answer.state != "no_answer" else 1


def cmd_tenant(args: argparse.Namespace) -> int:
    from streams.kafka.tenants import run_tenant_command

    return run_tenant_command(settings_from(args), args)


def cmd_backends(args: argparse.Namespace) -> int:
    from streams.ops.backends_table import run

    return run(Settings(), as_json=args.json)


def cmd_demo(args: argparse.Namespace) -> int:
    from streams.ops.demo import run_demo

    return run_demo(timeout_s=args.timeout)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="qlane", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="embedded broker + worker + sample jobs, then stop")
    demo.add_argument("--timeout", type=float, default=240.0)
    demo.set_defaults(run=cmd_demo)

    backends = commands.add_parser("backends", help="every backend a worker would offer")
    backends.add_argument("--json", action="store_true", help="a JSON list instead of a table")
    backends.set_defaults(run=cmd_backends)

    broker = commands.add_parser("broker", help="run the embedded Tansu broker in the foreground")
    broker.add_argument("--port", type=int, default=9092)
    broker.set_defaults(run=cmd_broker)

    kafka = commands.add_parser(
        "kafka", help="run a local Apache Kafka (KRaft) from Maven Central jars, in the foreground")
    kafka.add_argument("--nodes", type=int, choices=[1, 3], default=1)
    kafka.add_argument("--version", choices=["4.1", "3.9"], default="4.1")
    kafka.add_argument("--port", type=int, default=9092,
                       help="client port of node 1 (node i listens on PORT+i-1); 0 = free ports")
    kafka.add_argument("--sasl", action="store_true",
                       help="add a SASL_SSL listener (SCRAM-SHA-512, ACLs) on PORT+100 "
                       "(node i on PORT+100+i-1)")
    kafka.add_argument("--data", help="data folder (default: a temporary one, removed at stop)")
    kafka.set_defaults(run=cmd_kafka)

    worker = commands.add_parser("worker", help="run a Faust worker with every stage")
    add_connection_options(worker)
    worker.add_argument("--web-port", type=int, help="port of the worker's web server")
    worker.add_argument("--without-web", action="store_true", help="no web server")
    worker.add_argument("-l", "--loglevel", help="debug, info, warning, error")
    worker.add_argument("--log-format", choices=["text", "json"],
                        help="json: one JSON object per line (env QLANE_LOG_FORMAT)")
    worker.set_defaults(run=cmd_worker)

    submit = commands.add_parser("submit", help="submit a .qasm file or a YAML/JSON job file")
    add_connection_options(submit)
    submit.add_argument("path")
    submit.add_argument("--shots", type=int)
    submit.add_argument("--backend")
    submit.add_argument("--workflow-id")
    submit.add_argument("--observable", action="append", metavar="PAULI[:COEFF]",
                        help="repeatable; one observable each; join terms with +, e.g. ZZ:0.5+XX")
    submit.add_argument("--param-set", action="append", metavar="V1,V2,...",
                        help="repeatable; values in the circuit's sorted parameter order")
    submit.add_argument("--tenant", default=None,
                        help="the tenant whose job topics it goes to (a tenant's principal "
                        "may write no other); ids get its `<tenant>.` prefix")
    submit.add_argument("--wait", action="store_true", help="show progress, then the result")
    submit.add_argument("--json", action="store_true", help="print the JobResult as one JSON line")
    submit.add_argument("--timeout", type=float, default=120.0,
                        help="seconds for the whole command: connecting, sending, waiting")
    submit.set_defaults(run=cmd_submit)

    tail = commands.add_parser("tail", help="print a topic's events as JSON lines")
    add_connection_options(tail)
    tail.add_argument("topic", help="e.g. results, status, deadletter, status.TENANT or a full "
                                    "topic name")
    tail.add_argument("--from-beginning", action="store_true")
    tail.add_argument("--max", type=int, default=0, help="stop after N events")
    tail.add_argument("--timeout", type=float, default=0, help="stop after S seconds")
    tail.set_defaults(run=cmd_tail)

    dlq = commands.add_parser("dlq", help="inspect the dead-letter topic")
    dlq_actions = dlq.add_subparsers(dest="action", required=True)
    dlq_list = dlq_actions.add_parser("list", help="one line per dead letter")
    add_connection_options(dlq_list)
    dlq_list.add_argument("--max", type=int, default=0, help="only the last N")
    dlq_list.add_argument("--error-class", action="append", metavar="CLASS",
                          help="only dead letters of this error class; repeatable")
    dlq_show = dlq_actions.add_parser("show", help="headers and decoded value, as JSON")
    add_connection_options(dlq_show)
    dlq_show.add_argument("where", help="PARTITION:OFFSET, or a workflow id (key)")
    for action in (dlq_list, dlq_show):
        action.set_defaults(run=cmd_dlq)

    replay = commands.add_parser("replay", help="re-drive or rerun records from any topic")
    add_connection_options(replay)
    replay.add_argument("topic", help="source topic, e.g. deadletter or jobs")
    replay.add_argument("--to", help="target topic (default: where each record belongs)")
    replay.add_argument("--partition", type=int, action="append", help="repeatable")
    replay.add_argument("--from-offset", type=int)
    replay.add_argument("--to-offset", type=int, help="inclusive")
    replay.add_argument("--from-time", type=parse_time_ms,
                        help="epoch ms or ISO 8601 (UTC by default)")
    replay.add_argument("--to-time", type=parse_time_ms,
                        help="epoch ms or ISO 8601, inclusive")
    replay.add_argument("--key", action="append", help="only these workflow ids; repeatable")
    replay.add_argument("--error-class", action="append", metavar="CLASS",
                        help="only dead letters of this error class (BreakerOpen, ...); "
                             "repeatable")
    replay.add_argument("--rate", type=float, default=0.0, help="records per second (0 = no limit)")
    replay.add_argument("--rerun", action="store_true",
                        help="new workflow ids that name their parent, instead of re-driving")
    replay.add_argument("--rerun-label", metavar="LABEL",
                        help="implies --rerun; reruns records an earlier --rerun (of another "
                             "label) reran, with other ids")
    replay.add_argument("--dry-run", action="store_true", help="print the plan, send nothing")
    replay.set_defaults(run=cmd_replay)

    control = commands.add_parser("control", help="runtime controls shared by every worker")
    control_actions = control.add_subparsers(dest="action", required=True)
    noise = control_actions.add_parser("noise", help="scale a noisy backend's noise (drift)")
    add_connection_options(noise)
    noise.add_argument("--backend", required=True)
    noise.add_argument("--scale", type=float, required=True, help="1.0 = the calibration")
    noise.set_defaults(run=cmd_control)

    cancel = commands.add_parser("cancel", help="cancel a workflow (a no-op once it finished)")
    add_connection_options(cancel)
    cancel.add_argument("workflow_id")
    cancel.add_argument("--tenant", default=None, help="the tenant whose job topics it is on")
    cancel.add_argument("--reason", default="", help="free text, reported in its status")
    cancel.add_argument("--timeout", type=float, default=10.0,
                        help="seconds for the whole command: sending the cancel, its answer")
    cancel.set_defaults(run=cmd_cancel)
    tenant = commands.add_parser("tenant", help="tenants: their topics and Kafka ACLs")
    tenant_actions = tenant.add_subparsers(dest="action", required=True)
    for action, text in (("add", "create the tenant's topics and grant its principal"),
                         ("list", "tenants found on the cluster, with their principals"),
                         ("remove", "revoke the tenant's ACLs (--delete-topics: topics too)"),
                         ("grant-worker", "grant a worker principal the README's ACLs")):
        command = tenant_actions.add_parser(action, help=text)
        add_connection_options(command)
        if action in ("add", "remove"):
            command.add_argument("name", help="tenant name, [a-z0-9_]{1,64}")
        if action != "list":
            command.add_argument("--principal", required=True, help="e.g. User:acme")
        if action == "remove":
            command.add_argument("--delete-topics", action="store_true")
            command.add_argument("--force", action="store_true",
                                 help="delete the topics even while a worker reads them")
        command.set_defaults(run=cmd_tenant)
    return top


def error_text(error: BaseException) -> str:
    """`Class: message`, once (aiokafka's errors already start their text with their class)."""
    text = str(error)
    name = type(error).__name__
    return text if text.startswith(name) else f"{name}: {text}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as error:  # a broker refusing this client: say why, once, no traceback
        from streams.client.replay import UnknownTopic
        from streams.kafka.security import AccessRefused, explain_refusal

        # Refused credentials come from a client's connect (asked once, not retried).
        if isinstance(error, UnknownTopic | AccessRefused):
            print(f"qlane {args.command}: {error}", file=sys.stderr)
            return 2
        from streams.client.errors import BrokerTimeout, TopicsNotReadable, UnknownTenant

        if isinstance(error, UnknownTenant | TopicsNotReadable):  # before sending, or after
            print(f"qlane {args.command}: {printable(str(error))}", file=sys.stderr)
            return 2
        from workers.errors import BrokersMissing

        if isinstance(error, BrokerTimeout | BrokersMissing):
            print(f"qlane {args.command}: {printable(str(error))}", file=sys.stderr)
            return 1
        from workers.errors import QlaneError

        # Refused before sending: `cancel foo --tenant t1`, or a job file's field of the
        # wrong type (`seed: 1.5`, `shots: 1e3`: a traceback ending in CorruptRecord), or a
        # job or circuit file that cannot be read (a traceback; a red-team run).
        if isinstance(error, ValueError | FileNotFoundError | IsADirectoryError
                      | PermissionError) or (isinstance(error, QlaneError)
                                             and error.input_fault):
            print(f"qlane {args.command}: {printable(str(error))}", file=sys.stderr)
            return 2
        from streams.kafka.security import broker_unavailable

        # A refused login looks like a connection that failed: asked first (exit 2).
        reason = (explain_refusal(settings_from(args, detect=False), error)
                  if hasattr(args, "broker") else None)
        if reason is not None:
            print(f"qlane {args.command}: {reason}", file=sys.stderr)
            return 2
        if broker_unavailable(error):
            hint = ""
            if hasattr(args, "broker"):
                settings = settings_from(args, detect=False)
                if settings.security_protocol != "PLAINTEXT":
                    # A PLAINTEXT listener closes a TLS handshake (or never answers it): it
                    # read as a cluster down (a red-team run).
                    hint = (f"; or {settings.broker} is not a {settings.security_protocol} "
                            "listener (QLANE_SECURITY_PROTOCOL)")
            print(f"qlane {args.command}: the cluster cannot answer now "
                  f"({error_text(error)}){hint}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
