"""Client helpers: build JobRequests, submit them, and watch them to their outcome."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.codec import codec, fill_defaults
from streams.client.errors import TopicsNotReadable, UnknownTenant
from streams.kafka.compat import (
    assign_settled,
    drop_connections,
    listed_partitions,
    refused_topics,
    start_or_close,
    stop_consumer,
    stop_quietly,
    topic_partitions,
)
from streams.kafka.security import client_options, detect_profile
from streams.kafka.shutdown import install_logger_filter
from streams.kafka.tenants import tenant_ids, topic_tenant
from streams.kafka.topics import TopicNames, job_topic, lane_for_priority, tenant_topic
from streams.ops.logs import printable
from streams.settings import Settings
from streams.workflow.cancel import is_cancel
from streams.workflow.idempotency import IN_FLIGHT, earlier_state, request_fingerprint
from workers.errors import InvalidJob, UndecodableRecord
from workers.jobs import seed_out_of_range
from workers.variational.loop import STOPPED_BY_CANCEL

log = logging.getLogger("qlane")

# How often, and how far apart, a tenant's job topic is looked up before UnknownTenant.
TOPIC_LOOKUPS = 3
TOPIC_LOOKUP_PAUSE_S = 0.5
TOPIC_WAIT_PAUSE_S = 1.0  # between lookups of outcome topics that do not exist yet

REJECTED_BEFORE_ADMISSION = frozenset(
    {"CorruptRecord", "UnknownSchema", "UndecodableRecord", "KeyMismatch", "IdempotencyConflict",
     "TenantMismatch"}
)


def refused_before_admission(status: dict) -> bool:
    """A `failed` status of a job refused before it was admitted (it never ran)."""
    return (status["state"] == "failed" and status["stage"] == "preprocess"
            and status["detail"].split(":", 1)[0] in REJECTED_BEFORE_ADMISSION)


# The refused request's fingerprint in an IdempotencyConflict status (streams/agents/preprocess.py).
CONFLICT_FINGERPRINT = re.compile(
    r"IdempotencyConflict: this request \(fingerprint ([0-9a-f]{16})\)")
# A duplicate's earlier result is looked up by reading the results topic once, from the start.
DUPLICATE_LOOKUP_TIMEOUT_S = 30.0
# How long a wait reads on for the `done` statuses of the jobs it saw done (read_committed).
STATUS_CATCH_UP_S = 2.0
# The sent requests' fingerprints a client keeps (its latest submissions), about 170 B each:
# kept for every job, a long-lived client grew 170 MB a million jobs (a red-team run). Waiting
# on an older one, a refusal of another request under its id reads as its own answer.
SENT_FINGERPRINTS_KEPT = 65_536


def new_workflow_id(prefix: str = "wf") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def job_request(**fields) -> dict:
    """A complete JobRequest from the fields given; defaults fill the rest."""
    fields.setdefault("workflow_id", new_workflow_id())
    fields.setdefault("submitted_at_ms", int(time.time() * 1000))
    return fill_defaults("JobRequest", fields)


def load_job_file(path: Path) -> dict:
    """A YAML or JSON file whose keys mirror the JobRequest fields."""
    text = read_source(path)
    loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if not isinstance(loaded, dict):
        raise InvalidJob(f"{path}: a job file holds one mapping of JobRequest fields")
    if "circuit_file" in loaded:
        loaded["circuit"] = read_source(path.parent / loaded.pop("circuit_file"))
    return loaded


def read_source(path: Path) -> str:
    """A file's text as UTF-8, less a byte-order mark (an editor's, which no parser reads as
    whitespace: a job from a file saved with one failed on `non-ASCII byte: EF`)."""
    return path.read_text(encoding="utf-8-sig")


@dataclass
class Outcome:
    workflow_id: str
    state: str = "pending"  # pending | done | failed | rejected | duplicate | cancelled
    result: dict | None = None
    detail: str = ""
    history: list[str] = field(default_factory=list)
    result_follows: bool = False  # cancelled, with a result still to come (variational)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "rejected", "duplicate", "cancelled")

    @property
    def settled(self) -> bool:
        """Finished, with every record the job still sends seen."""
        return self.finished and not (self.result_follows and self.result is None)


def stopped_by_cancel(result: dict) -> bool:
    """Whether a JobResult is a variational loop's, stopped by a cancel before it ended."""
    return ((result or {}).get("variational") or {}).get("stop_reason") == STOPPED_BY_CANCEL


def announces_result(status: dict) -> bool:
    """Whether a `cancelled` status is a variational loop's that publishes its best so far
    (its result is sent before it, but may be read after it)."""
    return (status["state"] == "cancelled" and status["stage"] == "variational"
            and status["detail"] == STOPPED_BY_CANCEL)


def decode_dlq_headers(headers) -> dict[str, str]:
    return {name: (value or b"").decode(errors="replace") for name, value in headers or ()}


def shown_headers(headers) -> dict[str, str | None | list[str | None]]:
    """Headers as JSON for a reader: a null value stays null, and a name sent more than once
    keeps every value, in order, as a list (a dict of last values hid the others)."""
    shown: dict[str, str | None | list[str | None]] = {}
    repeated: set[str] = set()
    for name, value in headers or ():
        text = None if value is None else value.decode(errors="replace")
        if name not in shown:
            shown[name] = text
        elif name in repeated:
            shown[name].append(text)
        else:
            shown[name] = [shown[name], text]
            repeated.add(name)
    return shown


def encoded_request(record: dict) -> bytes:
    """The JobRequest's bytes, or an error before anything is sent: ValueError for a seed the
    workers refuse, CorruptRecord for a field of the wrong type."""
    seed = record.get("seed")
    if isinstance(seed, int) and (problem := seed_out_of_range(seed)) is not None:
        raise ValueError(problem)  # another type is the codec's CorruptRecord
    return codec("JobRequest").encode(record)


def own_ids(settings: Settings, topic: str, workflow_id: str) -> None:
    """ValueError, before sending, for an id the workers would refuse on a tenant's topic,
    or on any topic: one past the key's length limit, a variational loop's evaluation id."""
    from streams.kafka.partitioning import MAX_ROUTED_KEY_BYTES
    from streams.kafka.tenants import check_id_of, topic_tenant
    from workers.errors import TenantMismatch
    from workers.variational.loop import evaluated_workflow

    size = len(workflow_id.encode(errors="surrogatepass"))
    if not 1 <= size <= MAX_ROUTED_KEY_BYTES:
        # Sent, one of 17,000 bytes got no status at all, and its client waited out its
        # whole timeout (a red-team run).
        raise ValueError(f"a workflow id must be 1 to {MAX_ROUTED_KEY_BYTES} bytes of UTF-8, "
                         f"got {size}")
    if evaluated_workflow(workflow_id) is not None:
        raise ValueError(f"{workflow_id!r} names a variational loop's evaluation "
                         "(<id>#eval<n>): choose another id")
    try:
        check_id_of(topic_tenant(settings.topic_prefix, topic), workflow_id)
    except TenantMismatch as error:
        raise ValueError(str(error)) from None


class Client:
    """One producer plus a watcher over status, results and dead letters."""

    def __init__(self, settings: Settings, tenant: str | None = None) -> None:
        self.settings = settings
        # Where submit and cancel send by default: the tenant's job topics (None: the shared
        # ones). A tenant's client sent to the shared topics, refused by ACLs or, where its
        # principal could write there, run without a copy on its own topics (a red-team run).
        self.tenant = tenant
        self.names = TopicNames.from_settings(settings)
        # A tenant's outcomes come on its own read topics (README "Tenants, authenticated by
        # Kafka"); the shared ones are watched only while the tenant's do not exist.
        self.status_topics = [self.names.status]
        self.results_topics = [self.names.results]
        if tenant is not None:
            self.status_topics.append(tenant_topic(settings.topic_prefix, "status", tenant))
            self.results_topics.append(tenant_topic(settings.topic_prefix, "results", tenant))
        self.producer: AIOKafkaProducer | None = None
        self.watcher: AIOKafkaConsumer | None = None
        self._tenant_topics_found: set[str] = set()
        # Outcome topics the watcher is waiting for (`_wait_for_topics`): named by the
        # timeout that ends the wait (`streams.client.timeouts.open_client`).
        self.absent_topics: list[str] = []
        # workflow id -> the fingerprint (16 hex digits) of the request this client sent:
        # an IdempotencyConflict status about another request under the id is not its answer.
        self._sent_fingerprints: dict[str, str] = {}
        # During an outage aiokafka logs a warning per retry, every few milliseconds: a
        # client's console filled with them (a red-team run). The workers' guard, here too.
        install_logger_filter(settings.broker_warning_interval_s)

    async def __aenter__(self) -> Client:
        self.settings = await detect_profile(self.settings)  # its readers' isolation level
        # acks=all: a job acknowledged by a leader that dies before a follower copies it is
        # lost; with all, min.insync.replicas have it (the workers' producers do the same).
        self.producer = AIOKafkaProducer(**client_options(self.settings), linger_ms=0,
                                         acks="all")
        await start_or_close(self.producer)  # e.g. refused credentials: closes what it opened
        return self

    async def __aexit__(self, *exc: object) -> None:
        for part in (self.watcher, self.producer):
            if part is not None:
                await stop_quietly(part)

    def drop_connections(self) -> None:
        """Close every broker connection now: a close given up on (`open_client`)."""
        for part in (self.watcher, self.producer):
            if part is not None:
                drop_connections(part)

    async def watching(self) -> Client:
        """`start_watching`, its consumer stopped when it fails (asked again by
        `streams.client.timeouts.started`: a broker frozen while a job's client started
        its watcher gave aiokafka's own errors, some at half the caller's timeout; a
        red-team run)."""
        try:
            await self.start_watching()
        except BaseException:
            if self.watcher is not None:
                await stop_quietly(self.watcher)
                self.watcher = None
            raise
        return self

    async def start_watching(self) -> None:
        """Position at the end of the outcome topics before submitting, to miss nothing."""
        self.watcher = AIOKafkaConsumer(
            **client_options(self.settings), enable_auto_commit=False, group_id=None,
            isolation_level=self.settings.isolation_level,
            fetch_max_wait_ms=self.settings.effective_fetch_max_wait_ms,
        )
        await self.watcher.start()
        shared = (self.names.status, self.names.results, self.names.deadletter)
        own = [*self.status_topics[1:], *self.results_topics[1:]]
        found = {topic: await topic_partitions(self.watcher, topic) for topic in own}
        # A tenant's outcomes are copied to its own topics (streams/kafka/tenants.py); with ACLs its
        # principal may read only those, so the shared ones are watched only when needed
        # (no tenant topics yet) or readable (the dead letters, for an operator).
        tenant_only = bool(own) and all(found.values())
        if not tenant_only:
            await self._wait_for_topics(shared, found, [t for t in own if not found[t]])
        partitions = []
        for topic in (*shared, *own):
            if topic not in found:
                found[topic] = await topic_partitions(self.watcher, topic)
            if not found[topic] and (topic not in shared or tenant_only):
                continue  # a tenant topic that does not exist (yet), or one closed to us
            if tenant_only and topic in (self.names.status, self.names.results):
                continue
            partitions += [TopicPartition(topic, p)
                           for p in (found[topic] or range(self.settings.partitions))]
        self.watcher.assign(partitions)
        missing = [topic for topic in own if not found[topic]]
        await self.check_readable({tp.topic for tp in partitions}, missing)
        await self.watcher.seek_to_end(*partitions)
        for tp in partitions:  # resolve the end offsets now, not at the first fetch
            await self.watcher.position(tp)

    async def _wait_for_topics(self, topics: Iterable[str], found: dict,
                               missing: list[str]) -> None:
        """Look the shared outcome topics up (into `found`) until they all exist, once a
        second; the caller's timeout ends the wait. Topics this principal may not read are
        TopicsNotReadable at once (`missing`: as for `check_readable`).

        Assigned before they existed (a wrong topic prefix, no worker started yet), aiokafka
        asked for their offsets without a pause: a waiting client used half a core until
        its timeout, logging "not found in cluster metadata" 6,500 times a second (a
        red-team run)."""
        told = False
        while True:
            for topic in topics:
                if not found.get(topic):
                    found[topic] = await topic_partitions(self.watcher, topic)
            absent = [topic for topic in topics if not found[topic]]
            self.absent_topics = absent
            if not absent:
                return
            if not told:
                if self.settings.profile != "embedded":  # refused, not absent: said at once
                    self.refuse(await refused_topics(self.watcher._client, absent), missing)
                log.warning("waiting for %s to exist (is the topic prefix %r right? a worker "
                            "creates its topics when it starts)", ", ".join(absent),
                            self.settings.topic_prefix)
                told = True
            await asyncio.sleep(TOPIC_WAIT_PAUSE_S)

    async def check_readable(self, topics: set[str], missing: list[str] = ()) -> None:
        """TopicsNotReadable for assigned topics the broker refuses this principal: aiokafka
        asks for their offsets again and again until the caller's timeout (a tenant's
        principal watching the shared topics; a red-team run). `missing`: the named tenant's
        own topics, not found (the shared ones are watched instead): with ACLs, another
        tenant's topics are not listed to this principal."""
        client = self.watcher._client
        await client.force_metadata_update()
        self.refuse(topics & set(client.cluster.unauthorized_topics), missing)

    @staticmethod
    def refuse(refused: set[str], missing: list[str] = ()) -> None:
        """TopicsNotReadable naming the `refused` topics, if any (see `check_readable`)."""
        refused = sorted(refused)
        if refused and missing:
            # One tenant's principal naming another tenant was told to name its tenant (a
            # red-team run): it had, and the topics it was refused were the shared ones.
            raise TopicsNotReadable(
                f"the tenant's own topics ({', '.join(missing)}) do not exist or this "
                f"principal may not read them, and it may not read the shared ones "
                f"({', '.join(refused)}): is this principal the tenant's own? A tenant is "
                "added with `qlane tenant add NAME --principal User:...`")
        if refused:
            raise TopicsNotReadable(
                f"the broker does not let this principal read {', '.join(refused)}: a "
                "tenant's principal names its tenant (`--tenant`, `Client(settings, "
                "tenant=...)`, the primitives' `tenant`) and watches its own topics")

    def jobs_topic(self, tenant: str | None = None, lane: str = "normal") -> str:
        """The job topic of a tenant (None: the shared one) and lane (streams/kafka/topics.py)."""
        return job_topic(self.settings.topic_prefix, tenant, lane)

    async def submit(self, record: dict, topic: str | None = None) -> str:
        """Send a JobRequest; by default to the job topic of this client's tenant (the shared
        one without) in its priority's lane. Returns the topic it went to."""
        value = encoded_request(record)
        if topic is None:
            topic = self.jobs_topic(self.tenant, lane_for_priority(record.get("priority") or 0))
        own_ids(self.settings, topic, record["workflow_id"])
        await self._check_tenant_topic(topic)
        await self.producer.send_and_wait(topic, value=value, key=record["workflow_id"].encode())
        sent = self._sent_fingerprints
        sent.pop(record["workflow_id"], None)  # the newest last
        sent[record["workflow_id"]] = request_fingerprint(codec("JobRequest").decode(value))[:16]
        while len(sent) > SENT_FINGERPRINTS_KEPT:
            del sent[next(iter(sent))]
        return topic

    async def _check_tenant_topic(self, topic: str) -> None:
        """UnknownTenant, before sending, for a tenant's job topic that does not exist.

        A send to it waited for a topic no worker reads (Apache Kafka's default
        auto.create.topics.enable, and the embedded broker, create it on first use with
        their own partition count): a mistyped tenant ended on the client's ResultTimeout."""
        tenant = topic_tenant(self.settings.topic_prefix, topic)
        if tenant is None or topic in self._tenant_topics_found:
            return
        for attempt in range(TOPIC_LOOKUPS):
            if await listed_partitions(self.producer.client, topic):
                break
            # A topic just created can be left out of a metadata answer while its leaders
            # are elected (LEADER_NOT_AVAILABLE): asked again before it is refused.
            if attempt + 1 < TOPIC_LOOKUPS:
                await asyncio.sleep(TOPIC_LOOKUP_PAUSE_S)
        else:
            raise UnknownTenant(
                f"tenant {tenant[:80]!r} has no job topic {topic[:200]!r} that this principal "
                f"can see, so no worker would read what it sends: an operator adds a tenant "
                f"with `qlane tenant add` and names it in the workers' QLANE_TENANTS (with "
                f"ACLs, another tenant's topics are not listed to a tenant's principal)")
        self._tenant_topics_found.add(topic)

    async def cancel(self, workflow_id: str, tenant: str | None = None, reason: str = "") -> None:
        """Send a JobCancel on the high lane of the tenant's job topics (by default this
        client's tenant's), to overtake queues."""
        tenant = self.tenant if tenant is None else tenant
        own_ids(self.settings, self.jobs_topic(tenant, "high"), workflow_id)
        await self._check_tenant_topic(self.jobs_topic(tenant, "high"))
        value = codec("JobCancel").encode(
            {"workflow_id": workflow_id, "reason": reason,
             "requested_at_ms": int(time.time() * 1000)}
        )
        await self.producer.send_and_wait(
            self.jobs_topic(tenant, "high"), value=value, key=workflow_id.encode()
        )

    async def submit_and_wait(self, jobs: list[dict], timeout_s: float) -> dict[str, Outcome]:
        """Watch, submit each JobRequest, then wait for all of them (or the timeout)."""
        await self.start_watching()
        for job in jobs:
            await self.submit(job)
        return await self.wait([job["workflow_id"] for job in jobs], timeout_s)

    async def wait(
        self,
        workflow_ids: Iterable[str],
        timeout_s: float,
        on_event: Callable[[Outcome, str], None] | None = None,
        keep_waiting: Callable[[], bool] = lambda: True,
    ) -> dict[str, Outcome]:
        outcomes = {wf: Outcome(wf) for wf in workflow_ids}
        deadline = time.monotonic() + timeout_s
        while not all(o.settled for o in outcomes.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not keep_waiting():
                break
            batch = await self.watcher.getmany(timeout_ms=int(min(remaining, 0.5) * 1000))
            # Statuses first: a job's last statuses and its result can become visible in one
            # fetch (one transaction on exactly-once), and the history should hold them.
            for _tp, records in sorted(batch.items(),
                                      key=lambda item: item[0].topic not in self.status_topics):
                for record in records:
                    self._apply(outcomes, record, on_event)
        if (self.settings.isolation_level == "read_committed"
                and any(o.finished for o in outcomes.values())):
            await self._catch_up_statuses(outcomes, on_event)
        duplicates = [o for o in outcomes.values() if o.state == "duplicate" and o.result is None]
        if duplicates:
            found = await self.find_results({o.workflow_id for o in duplicates},
                                            timeout_s=DUPLICATE_LOOKUP_TIMEOUT_S)
            for outcome in duplicates:
                result = found.get(outcome.workflow_id)
                if result is not None:
                    # As when read live: a loop stopped by a cancel is cancelled (its table
                    # entry is done, so its resubmission is "already done": a red-team run).
                    self._settle(outcome, result)
        return outcomes

    async def _catch_up_statuses(self, outcomes: dict[str, Outcome], on_event) -> None:
        """Read the status partitions until every job that is done has its `done` status.

        A job's result and its `done` status are committed in one transaction, but a
        read_committed reader sees a transaction's partitions one by one, and a status
        partition stays hidden past any transaction still open on it (its last stable
        offset), so the result can come first by a fetch or by a commit interval. What is
        read here is applied as in the wait (`_apply`: a finished job's statuses join its
        history). Bounded by STATUS_CATCH_UP_S."""
        partitions = [tp for tp in self.watcher.assignment() if tp.topic in self.status_topics]
        deadline = time.monotonic() + STATUS_CATCH_UP_S
        while partitions and time.monotonic() < deadline:
            if all("done" in o.history for o in outcomes.values() if o.state == "done"):
                return
            batch = await self.watcher.getmany(*partitions, timeout_ms=100)
            for _tp, records in batch.items():
                for record in records:
                    self._apply(outcomes, record, on_event)

    @staticmethod
    def _take_duplicate(outcome: Outcome, detail: str) -> None:
        """A submission of a workflow that was submitted before: its outcome is the earlier
        one's. One still in flight is waited for (its result comes on the watched topics);
        one cancelled is cancelled (it was a `duplicate` whose result was looked for in vain,
        reported as a timeout: a red-team run); one done has its result looked up."""
        before = earlier_state(detail)
        if before in IN_FLIGHT:
            return
        if before == "cancelled":
            outcome.state, outcome.detail = "cancelled", "cancelled at an earlier submission"
            return
        outcome.state, outcome.detail = "duplicate", detail

    @staticmethod
    def _settle(outcome: Outcome, result: dict) -> None:
        outcome.result = result
        outcome.state = "done"
        if stopped_by_cancel(outcome.result):
            # A variational loop stopped by a cancel publishes what it found so far: the
            # workflow was cancelled all the same, and says so.
            outcome.state = "cancelled"
            outcome.detail = "stopped by a cancel; the result holds the loop's best so far"

    def _about_the_job(self, workflow_id: str, value: bytes | None, headers: dict) -> bool:
        """Whether a dead letter keyed by a watched workflow id stands for that workflow's
        job: not a refused cancel (the job goes on), nor a record from another tenant's job
        topic. A tenant that sent a cancel, or a job, under another tenant's id on its own
        topic had it dead-lettered as TenantMismatch, and the other tenant's client reported
        its job `rejected` while it ran and was charged (a red-team run)."""
        if is_cancel(value):
            return False
        tenant = topic_tenant(self.settings.topic_prefix,
                              headers.get("qlane.dlq.source.topic", ""))
        if tenant is not None and not workflow_id.startswith(tenant_ids(tenant)):
            return False
        return not self._another_request(workflow_id, value)

    def _another_request(self, workflow_id: str, value: bytes | None) -> bool:
        """Whether a dead letter's record is a request other than the one this client sent
        under the id (a changed request under a running job's id, IdempotencyConflict)."""
        sent = self._sent_fingerprints.get(workflow_id)
        if not sent or not value:
            return False
        try:
            return request_fingerprint(codec("JobRequest").decode(value))[:16] != sent
        except Exception:  # noqa: BLE001 - not a request this client could have sent
            return False

    def _apply(self, outcomes, record, on_event) -> None:
        key = (record.key or b"").decode(errors="replace")
        outcome = outcomes.get(key)
        if outcome is None:
            return
        try:
            self._apply_to(outcome, key, record, on_event)
        except UndecodableRecord as error:
            # Anyone may write these topics on the embedded broker: a record under the job's
            # id that is no status or result is not its answer (its CorruptRecord ended
            # `qlane submit --wait` with a traceback, the job's real outcome unread: a
            # red-team run).
            log.warning("ignored an undecodable record under %s on %s: %s",
                        printable(key[:80]), record.topic, error)

    def _about_another_request(self, workflow_id: str, status: dict) -> bool:
        """Whether a status refuses another request than the one this client sent under the
        id (IdempotencyConflict names the refused request's fingerprint)."""
        sent = self._sent_fingerprints.get(workflow_id)
        match = CONFLICT_FINGERPRINT.match(status["detail"])
        return bool(sent and match and match.group(1) != sent)

    def _apply_to(self, outcome, key: str, record, on_event) -> None:
        if outcome.finished:
            # A transaction's partitions become visible one by one: a status committed with
            # the result can come a fetch after it. It joins the history, nothing else;
            # the result of a loop stopped by a cancel may also come after its status.
            if record.topic in self.status_topics:
                outcome.history.append(codec("JobStatus").decode(record.value)["state"])
            elif record.topic in self.results_topics and outcome.result_follows:
                self._settle(outcome, codec("JobResult").decode(record.value))
            return
        if record.topic in self.status_topics:
            status = codec("JobStatus").decode(record.value)
            outcome.history.append(status["state"])
            if self._about_another_request(key, status):
                return
            if status["state"] == "duplicate":
                self._take_duplicate(outcome, status["detail"])
            elif status["state"] in ("failed", "cancelled"):
                outcome.state = status["state"]
                outcome.detail = status["detail"]
                if refused_before_admission(status):  # told on a tenant's own status topic
                    outcome.state = "rejected"
                outcome.result_follows = announces_result(status)
            event = status["state"]
            if status.get("progress"):
                step = status["progress"]
                event = (f"iteration {step['iteration']}: value {step['value']:.5f} "
                         f"± {step['std_error']:.5f}, spent USD {step['spend_usd']:.4f}")
        elif record.topic in self.results_topics:
            self._settle(outcome, codec("JobResult").decode(record.value))
            event = "result"
        else:
            headers = decode_dlq_headers(record.headers)
            if not self._about_the_job(key, record.value, headers):
                return
            error = headers.get("qlane.dlq.error.class", "")
            stage = headers.get("qlane.dlq.stage", "")
            # Rejected before admission the workflow never ran; otherwise it failed.
            rejected = stage == "preprocess" and error in REJECTED_BEFORE_ADMISSION
            outcome.state = "rejected" if rejected else "failed"
            outcome.detail = f"{error}: {headers.get('qlane.dlq.error.message')}"
            event = "dead-letter"
        if on_event:
            on_event(outcome, event)

    async def find_results(self, workflow_ids: set[str], timeout_s: float) -> dict[str, dict]:
        """The JobResults published earlier for these workflow ids (for duplicates)."""
        keys = {workflow_id.encode() for workflow_id in workflow_ids}
        found = {}
        for topic in self.results_topics:
            async for record in read_topic(self.settings, topic, timeout_s=timeout_s):
                # The first readable one: a worker republishes the stored bytes of the same
                # answer, and a later record under the id was taken over the real one (a
                # forged result on the embedded broker, where anyone writes the topic).
                if record.key in keys and record.key.decode() not in found:
                    try:
                        found[record.key.decode()] = codec("JobResult").decode(record.value)
                    except UndecodableRecord:
                        continue
        return found


async def read_topic(settings: Settings, topic: str, timeout_s: float, max_records: int = 0):
    """Every record of a topic from the beginning up to its current end."""
    consumer = AIOKafkaConsumer(
        **client_options(settings), enable_auto_commit=False, group_id=None,
        isolation_level=settings.isolation_level,
    )
    await start_or_close(consumer)
    try:
        partitions = [
            TopicPartition(topic, p) for p in await topic_partitions(consumer, topic)
        ]
        if not partitions:
            return
        await assign_settled(consumer, partitions)
        ends = await consumer.end_offsets(partitions)
        await consumer.seek_to_beginning(*partitions)
        pending = {tp for tp in partitions if ends[tp] > 0}
        deadline = time.monotonic() + timeout_s
        seen = 0
        while pending and time.monotonic() < deadline:
            batch = await consumer.getmany(*pending, timeout_ms=300)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < ends[tp]:
                        yield record
                        seen += 1
                        if max_records and seen >= max_records:
                            return
                if records and records[-1].offset + 1 >= ends[tp]:
                    pending.discard(tp)
            for tp in list(pending):
                if await consumer.position(tp) >= ends[tp]:
                    pending.discard(tp)
    finally:
        await stop_consumer(consumer)

