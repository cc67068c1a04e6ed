"""Failures of the Kafka cluster itself.

- A worker whose broker went away stops within QLANE_SHUTDOWN_TIMEOUT_S of a SIGTERM, and
  its log stays small while the broker is unreachable (1 node, in `make test`). The same
  worker with both guards off shows the upstream behaviour they exist for: a warning per
  retry, and (in most runs) a stop that does not end.
- 3 nodes (RF 3, min.insync.replicas 2, acks=all, exactly-once): 1,000 jobs while workers
  and brokers (the partition leader included) are SIGKILLed one at a time and restarted,
  then 2 of 3 brokers down: nothing lost or duplicated for read_committed readers, no
  progress while the quorum is gone, and progress again when it returns (`make reliability`).
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter

import pytest

from streams.brokers.kafka_local import KafkaCluster
from streams.client import job_request
from streams.kafka.topics import ensure_topics
from streams.ops.processes import start_worker, stop_process
from tests.reliability.conftest import scale
from tests.reliability.exactly_once_support import Workers, audit, submit, wait_finished
from tests.support import BELL, session_settings, wait_until_ready

SHUTDOWN_TIMEOUT_S = 3


def exit_time(process: subprocess.Popen, limit_s: float) -> float | None:
    """Seconds from SIGTERM to exit, or None if it is still running after `limit_s`."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=limit_s)
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - started


def lines_since(path, offset: int) -> list[str]:
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read().decode(errors="replace").splitlines()


def test_a_worker_stops_in_bounded_time_and_quietly_when_its_broker_is_gone(tmp_path, report):
    cluster = KafkaCluster(nodes_count=1, data_dir=tmp_path / "kafka").start()
    guarded = unguarded = None
    try:
        settings = session_settings(cluster.bootstrap, "kafka", tag="shutdown")
        asyncio.run(ensure_topics(settings))
        guarded_log, unguarded_log = tmp_path / "guarded.log", tmp_path / "unguarded.log"
        guarded = start_worker(settings, guarded_log, env={
            "QLANE_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
            "QLANE_BROKER_WARNING_INTERVAL_S": "30"})
        # The same worker without the guards: what Faust and aiokafka do on their own.
        unguarded = start_worker(settings, unguarded_log, env={
            "QLANE_SHUTDOWN_TIMEOUT_S": "3600", "QLANE_BROKER_WARNING_INTERVAL_S": "0"})
        wait_until_ready(settings, guarded_log)
        wait_until_ready(settings, unguarded_log)
        offsets = {path: path.stat().st_size for path in (guarded_log, unguarded_log)}
        cluster.kill_node(1)
        time.sleep(5)  # the broker stays unreachable (long enough for retries to pile up)
        # A worker that already exited would "stop" in 0 s with an empty log: prove nothing.
        for process, path in ((guarded, guarded_log), (unguarded, unguarded_log)):
            assert process.poll() is None, f"{path.name} exited early:\n{path.read_text()[-3000:]}"
        guarded_s = exit_time(guarded, SHUTDOWN_TIMEOUT_S + 15)
        # The unguarded worker gets as long as the guarded one may take (below).
        unguarded_s = exit_time(unguarded, SHUTDOWN_TIMEOUT_S + 5)
        guarded_lines = lines_since(guarded_log, offsets[guarded_log])
        unguarded_lines = lines_since(unguarded_log, offsets[unguarded_log])
        unable = [line for line in guarded_lines if "Unable connect" in line
                  or "Unable to request metadata" in line]
        report.update(guarded_exit_s=None if guarded_s is None else round(guarded_s, 1),
                      unguarded_exit_s=unguarded_s, guarded_log_lines=len(guarded_lines),
                      unguarded_log_lines=len(unguarded_lines),
                      guarded_connect_warnings=len(unable))
        assert guarded_s is not None, "\n".join(guarded_lines[-60:])
        assert guarded_s <= SHUTDOWN_TIMEOUT_S + 5
        assert len(unable) <= 10, "\n".join(unable[:20])
        assert len(guarded_lines) < 400, "\n".join(guarded_lines[-80:])
        # Upstream: one warning per retry. If this fails, Faust or aiokafka changed, and the
        # log guard may no longer be needed. Upstream's stop time is reported, not asserted:
        # it usually never ends (None after 8 s), but one CI run saw it end in 4.2 s, when
        # nothing was waiting on the broker at the SIGTERM; the deadline exists for the others.
        assert len(unguarded_lines) > 2 * len(guarded_lines)
    finally:
        for process in (guarded, unguarded):
            if process is not None:
                stop_process(process, sig=signal.SIGKILL)
        cluster.stop()


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


async def _leader(settings, topic: str, partition: int) -> int:
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.kafka.security import kafka_options

    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        for description in await admin.describe_topics([topic]):
            for info in description["partitions"]:
                if info["partition"] == partition:
                    return info["leader"]
    finally:
        await admin.close()
    raise LookupError(f"no leader for {topic}[{partition}]")


def leader(settings, topic: str, partition: int = 0) -> int:
    return asyncio.run(_leader(settings, topic, partition))


def progress_metrics(workers: Workers) -> tuple[float, float]:
    """Latest last-progress time and total consumer lag over the workers that answer."""
    latest, lag = 0.0, 0.0
    for slot, process in enumerate(workers.processes):
        if process is None or process.poll() is not None:
            continue
        try:
            latest = max([latest] + [v for _, v in workers.metric(
                slot, "qlane_last_progress_timestamp_seconds")])
            lag += sum(v for _, v in workers.metric(slot, "qlane_consumer_lag"))
        except OSError:
            continue
    return latest, lag


async def _coordinator_and_leaders(settings, topic: str) -> tuple[int, Counter]:
    """The worker group's coordinator node, and how many of `topic`'s partitions each node leads."""
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.kafka.security import kafka_options

    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        coordinator = await admin.find_coordinator(settings.app_id)
        (description,) = await admin.describe_topics([topic])
        return coordinator, Counter(info["leader"] for info in description["partitions"])
    finally:
        await admin.close()


class SteadySubmitter(threading.Thread):
    """Bell jobs at a steady rate from one producer whose requests time out as the workers'
    do (a client left on Kafka's 40 s default would itself hold up the jobs behind it)."""

    def __init__(self, settings, per_second: float, duration_s: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.period, self.duration_s = settings, 1 / per_second, duration_s
        self.ids: list[str] = []

    def run(self) -> None:
        asyncio.run(self.go())

    async def go(self) -> None:
        from aiokafka import AIOKafkaProducer

        from schemas.codec import codec
        from streams.kafka.security import kafka_options

        producer = AIOKafkaProducer(**{**kafka_options(self.settings),
                                       "request_timeout_ms": 10_000},
                                    acks="all", enable_idempotence=True)
        await producer.start()
        try:
            encode, sends = codec("JobRequest").encode, []
            end = time.monotonic() + self.duration_s
            while time.monotonic() < end:
                job = job_request(workflow_id=f"fz-{len(self.ids)}-{uuid.uuid4().hex[:6]}",
                                  circuit=BELL, shots=64)
                sends.append(await producer.send(self.settings.topic("jobs"), encode(job),
                                                 key=job["workflow_id"].encode()))
                self.ids.append(job["workflow_id"])
                await asyncio.sleep(self.period)
            await asyncio.gather(*sends)
        finally:
            await producer.stop()


FREEZE_S = 36


@pytest.fixture(scope="module")
def three_nodes(tmp_path_factory):
    cluster = KafkaCluster(nodes_count=3, data_dir=tmp_path_factory.mktemp("kafka3")).start()
    yield cluster
    cluster.stop()


@pytest.mark.xdist_group("three_nodes")
def test_a_frozen_node_holds_up_jobs_for_seconds_not_for_its_whole_freeze(
        three_nodes, tmp_path, report):
    """SIGSTOP of the node leading most of the jobs partitions (not the group coordinator,
    whose freeze may stop a worker: docs/reliability.md): its connections stay open and
    silent. With Faust's request timeouts (1,200 s, 90 s) no job finished for the whole
    freeze; on the kafka profile the workers give up on it after QLANE_KAFKA_REQUEST_TIMEOUT_S
    and find the new leaders at their next metadata refresh."""
    cluster = three_nodes
    workers = frozen = None
    try:
        settings = session_settings(cluster.bootstrap, "kafka", tag="freeze", partitions=4,
                                    replication_factor=3, min_insync_replicas=2)
        asyncio.run(ensure_topics(settings))
        workers = Workers(settings, tmp_path, count=2, web_ports=free_ports(2), env={
            "QLANE_REPLICATION_FACTOR": "3", "QLANE_MIN_INSYNC_REPLICAS": "2"})
        workers.start_all()
        wait_until_ready(settings, workers.log(0))
        time.sleep(10)  # the second worker's join settles before anything is measured
        coordinator, leaders = asyncio.run(
            _coordinator_and_leaders(settings, settings.topic("jobs")))
        victim = frozen = max((node for node in (1, 2, 3) if node != coordinator),
                              key=lambda node: leaders[node])
        submitter = SteadySubmitter(settings, per_second=2, duration_s=FREEZE_S + 20)
        submitter.start()
        time.sleep(8)
        frozen_at = time.time()
        cluster.freeze_node(frozen)
        time.sleep(FREEZE_S)
        thawed_at = time.time()
        cluster.thaw_node(frozen)
        frozen = None
        submitter.join(timeout=120)
        ids = submitter.ids
        found = None
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            workers.restart_exited()
            found = wait_finished(settings, ids, timeout_s=20)
            if found.finished(ids) == len(ids):
                break
        completed = sorted(at for wf, at in found.completed_at_s().items() if wf in ids)
        during = [at for at in completed if frozen_at <= at <= thawed_at]
        edges = [frozen_at, *during, thawed_at]
        longest_gap = max(b - a for a, b in itertools.pairwise(edges))
        report.update(jobs=len(ids), frozen_node=victim, jobs_leaders=dict(leaders),
                      coordinator=coordinator, done_during_freeze=len(during),
                      longest_gap_s=round(longest_gap, 1), worker_restarts=workers.crashes,
                      lost=len(found.lost(ids)),
                      **{f"duplicate_{k}": v for k, v in found.duplicates(ids).items()})
        assert found.lost(ids) == []
        assert found.duplicates(ids) == {"results": 0, "cost": 0, "terminal": 0}
        assert longest_gap < FREEZE_S - 10, (longest_gap, during)
        assert len(during) >= FREEZE_S // 2  # at least a job a second, of two submitted
    finally:
        if frozen is not None:
            cluster.thaw_node(frozen)
        if workers is not None:
            workers.stop_all()


async def _replicas(settings, topics: list[str]) -> dict[str, int]:
    from aiokafka.admin import AIOKafkaAdminClient

    from streams.kafka.security import kafka_options

    admin = AIOKafkaAdminClient(**kafka_options(settings))
    await admin.start()
    try:
        present = set(await admin.list_topics())
        return {d["topic"]: min(len(p["replicas"]) for p in d["partitions"])
                for d in await admin.describe_topics([t for t in topics if t in present])}
    finally:
        await admin.close()


@pytest.mark.xdist_group("three_nodes")
def test_a_tenant_added_while_a_node_is_down_gets_no_topic_with_fewer_replicas(three_nodes):
    """Counted from the brokers that answered, a tenant added while one node of three was
    down got topics of 2 replicas, and `tenant add` exited 0: they stopped at the next
    node's loss while the other tenants' went on (a red-team run)."""
    from streams.kafka.security import preflight
    from streams.kafka.tenants import tenant_topics
    from workers.errors import BrokersMissing

    cluster = three_nodes
    settings = session_settings(cluster.bootstrap, "kafka", tag="rf", partitions=2,
                                startup_broker_wait_s=20)
    asyncio.run(ensure_topics(settings))  # the prefix's topics, 3 replicas each
    tenant = f"late{uuid.uuid4().hex[:6]}"
    with_tenant = settings.model_copy(update={"tenants": [tenant], "replication_factor": None})
    topics = [t for kind in tenant_topics(settings.topic_prefix, tenant).values() for t in kind]
    cluster.kill_node(3)
    time.sleep(12)  # KRaft fences it (9 s) and moves its leaders
    try:
        # As a worker starts: retried while the brokers are missing, for the start-up wait.
        with pytest.raises(BrokersMissing, match=r"down: \[3\]"):
            asyncio.run(preflight(with_tenant, ensure_topics))
        assert asyncio.run(_replicas(settings, topics)) == {}
    finally:
        cluster.restart_node(3)
    asyncio.run(preflight(with_tenant.model_copy(update={"replication_factor": None}),
                          ensure_topics))
    assert asyncio.run(_replicas(settings, topics)) == {topic: 3 for topic in topics}


# Kill plan: one failure at a time, each undone before the next; "leader" kills the broker
# that leads partition 0 of the jobs topic at that moment.
PLAN = ("worker", "leader", "worker", "worker", "broker", "worker", "worker", "leader", "worker")


@pytest.mark.slow
@pytest.mark.timeout(5400)
def test_three_nodes_survive_worker_and_broker_kills_and_a_lost_quorum(tmp_path, report):
    cluster = KafkaCluster(nodes_count=3, data_dir=tmp_path / "kafka").start()
    workers = None
    try:
        settings = session_settings(cluster.bootstrap, "kafka", tag="cluster", partitions=4,
                                    replication_factor=3, min_insync_replicas=2)
        asyncio.run(ensure_topics(settings))
        count = scale(200, 1000)
        jobs = [job_request(workflow_id=f"cl-{i}-{uuid.uuid4().hex[:6]}", circuit=BELL,
                            shots=64) for i in range(count)]
        ids = [job["workflow_id"] for job in jobs]
        # Each backend call sleeps 0.3 s first (latency only: same counts), so that a wave
        # is in flight when its failure comes: the batch path computes a wave of 20 Bell
        # jobs in one call per worker, about 0.1 s without it (a broker kill then hit a wave
        # that was computed and only waited for its commit).
        workers = Workers(settings, tmp_path, count=3, web_ports=free_ports(3), env={
            "QLANE_REPLICATION_FACTOR": "3", "QLANE_MIN_INSYNC_REPLICAS": "2",
            "QLANE_FAULTS": "aer.ideal:latency_s=0.3"})
        workers.start_all()
        # The jobs go in in waves, one before each failure, and each failure comes 0.1 s
        # after its wave went in, while the wave is in the pipeline: a quiet worker commits
        # each stage within milliseconds (idle_commit_s), so a wave of 20 Bell jobs is done
        # in well under a second (with 1 s, some small waves were over before their failure;
        # with 0.3 s, 3 of 9 once recoveries no longer waited 10 s after each rebalance).
        # After the run, the completion times show that each failure hit its wave in flight.
        waves = [jobs[i::len(PLAN) + 1] for i in range(len(PLAN) + 1)]
        submit(settings, waves[0])
        started = time.monotonic()
        broker_kills, leader_kills, events, failed_at = 0, 0, [], []
        for step, kind in enumerate(PLAN, start=1):
            # The previous waves finish first (or 300 s pass): one failure at a time.
            earlier = [job["workflow_id"] for wave in waves[:step] for job in wave]
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                workers.restart_exited()
                if wait_finished(settings, earlier, timeout_s=20).finished(earlier) == len(
                        earlier):
                    break
            submit(settings, waves[step])
            time.sleep(0.1)
            failed_at.append(time.time())
            if kind == "worker":
                slot = (workers.kills) % 3
                workers.kill(slot)
                time.sleep(2)
                workers.start(slot)
                events.append(f"worker{slot}")
            else:
                node = leader(settings, settings.topic("jobs")) if kind == "leader" else (
                    broker_kills % 3) + 1
                cluster.kill_node(node)
                time.sleep(5)
                cluster.restart_node(node)
                broker_kills += 1
                leader_kills += kind == "leader"
                events.append(f"broker{node}{'(leader)' if kind == 'leader' else ''}")
        found = None
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline:
            workers.restart_exited()
            found = wait_finished(settings, ids, timeout_s=30)
            if found.finished(ids) == count:
                break
        kill_phase_s = time.monotonic() - started
        report.update(jobs=count, worker_kills=workers.kills, broker_kills=broker_kills,
                      leader_kills=leader_kills, worker_crash_restarts=workers.crashes,
                      kill_phase_s=round(kill_phase_s), events="/".join(events),
                      lost=len(found.lost(ids)),
                      **{f"duplicate_{k}": v for k, v in found.duplicates(ids).items()})
        completed_at = found.completed_at_s()
        in_flight = [sum(1 for job in waves[step] if completed_at.get(job["workflow_id"], 0) > at)
                     for step, at in enumerate(failed_at, start=1)]
        report.update(wave_jobs_finished_after_their_failure="/".join(map(str, in_flight)))
        assert found.lost(ids) == []
        assert found.duplicates(ids) == {"results": 0, "cost": 0, "terminal": 0}
        assert all(in_flight), f"failures that hit no job in flight: {in_flight}"
        assert workers.kills >= 6 and broker_kills >= 3 and leader_kills >= 1

        # 2 of 3 brokers down: no quorum, no in-sync majority. Nothing may be lost or
        # duplicated; progress stops, and resumes when they return.
        more = [job_request(workflow_id=f"st-{i}-{uuid.uuid4().hex[:6]}", circuit=BELL,
                            shots=64) for i in range(scale(300, 1000))]
        more_ids = [job["workflow_id"] for job in more]
        submit(settings, more)
        # Some finish; most are still queued when the brokers go. The batch path runs a
        # taken batch in one call: 60 jobs (the earlier small size) were all computed within
        # 0.2 s of going in, and only their commits waited for the brokers.
        time.sleep(0.5)
        down_at = time.time()
        cluster.kill_node(2)
        cluster.kill_node(3)
        time.sleep(10)  # records in flight when the brokers died may still finish
        settled, lag = progress_metrics(workers)
        time.sleep(scale(20, 50))
        latest, lag_later = progress_metrics(workers)
        stall_s = time.time() - down_at
        no_progress = latest <= settled
        returned_at = time.time()
        restarted_at = time.monotonic()
        cluster.restart_node(2, 3)
        found_more = None
        while time.monotonic() - restarted_at < 900:
            workers.restart_exited()
            found_more = wait_finished(settings, more_ids, timeout_s=5)
            if found_more.finished(more_ids) == len(more):
                break
        recovered_s = time.monotonic() - restarted_at
        final = audit(settings)
        every = ids + more_ids
        finished_at = final.completed_at_s()
        completed_at = [finished_at[wf] for wf in more_ids if wf in finished_at]
        after_return = sorted(at - returned_at for at in completed_at if at > returned_at)
        report.update(stall_jobs=len(more), stall_s=round(stall_s), progress_stopped=no_progress,
                      lag_during_stall=lag_later,
                      finished_before_the_stall=sum(at < down_at for at in completed_at),
                      finished_after_return=len(after_return),
                      first_result_after_return_s=round(after_return[0], 1) if after_return
                      else None, all_done_after_return_s=round(recovered_s),
                      lost_total=len(final.lost(every)),
                      **{f"duplicate_{k}_total": v for k, v in final.duplicates(every).items()})
        assert after_return, "every job finished before the brokers came back"
        assert no_progress, (settled, latest)
        assert lag_later > 0  # the backlog QlaneNoProgress and QlaneConsumerLagHigh watch
        assert final.lost(every) == []
        assert final.duplicates(every) == {"results": 0, "cost": 0, "terminal": 0}
    finally:
        if workers is not None:
            workers.stop_all()
        cluster.stop()
