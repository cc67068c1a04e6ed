"""Every setting of qlane in one typed place (environment variables `QLANE_*`)."""

from __future__ import annotations

import json
from dataclasses import fields
from typing import Annotated, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from streams.ops.logs import LogFormat
from workers.cores import usable_cores
from workers.limits import Limits

Profile = Literal["embedded", "kafka"]

# Tansu answers a waiting fetch only when fetch.max.wait expires, so Faust's fixed
# 1500 ms would add 1.5 s per stage; on Apache Kafka new data ends the wait at once.
DEFAULT_BROKER = "127.0.0.1:9092"
# The smallest record limit a worker runs with: a job's status, cost and table entry
# records take a few KB, its stage records more.
MIN_RECORD_BYTES = 65_536
EMBEDDED_FETCH_MAX_WAIT_MS = 20
KAFKA_FETCH_MAX_WAIT_MS = 500
# With fewer usable cores the simulator process cannot overlap the worker's Kafka work.
SIMULATOR_PROCESS_MIN_CORES = 2


def _json_or_items(name: str, value: str, opener: str,
                   pairs: bool = False) -> tuple[bool, object]:
    """(True, the JSON `value` holds) when it starts with `opener`, else (False, its
    comma-separated items, stripped, empty ones left out)."""
    text = value.strip()
    if text.startswith(opener):
        return True, _json_setting(name, text, pairs)
    return False, [item.strip() for item in text.split(",") if item.strip()]


def _budget_item(item: str) -> tuple[str, str]:
    name, equals, amount = item.partition("=")
    if not equals or not name.strip():
        raise ValueError(f"QLANE_TENANT_BUDGETS item {item!r}: expected tenant=usd, as in "
                         'acme=50,beta=20 (or JSON: {"acme": 50})')
    return name.strip(), amount.strip()


def _json_setting(name: str, text: str, pairs: bool = False) -> object:
    """`text` parsed as JSON (with `pairs`, objects as lists of (key, value) pairs, so that
    a key given twice can be told), else ValueError naming the setting."""
    try:
        return json.loads(text, object_pairs_hook=list if pairs else None)
    except ValueError as error:
        raise ValueError(f"{name} is not valid JSON ({error})") from None


def normalize_bootstrap(value: str) -> str:
    """`host:port[,host:port]` from what users write: Faust's `kafka://host:port` URLs (each
    entry may carry the scheme), separated by commas, semicolons or spaces."""
    servers = []
    for entry in value.replace(";", ",").replace(" ", ",").split(","):
        entry = entry.strip()
        if not entry:
            continue
        if "://" in entry:
            scheme, entry = entry.split("://", 1)
            if scheme.lower() not in ("kafka", "qlane", "aiokafka", "tcp"):
                raise ValueError(f"unsupported broker URL scheme {scheme!r} in {value!r}")
        entry = entry.rstrip("/")
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"broker {entry!r} is not host:port (in {value!r})")
        servers.append(entry)
    if not servers:
        raise ValueError(f"no broker address in {value!r}")
    return ",".join(servers)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="QLANE_", extra="ignore")

    broker: str = Field(DEFAULT_BROKER, description="bootstrap servers, host:port[,host:port]")
    profile: Profile | None = Field(
        None,
        description="embedded = tuned for the local Tansu broker; kafka = Apache Kafka; "
        "unset = embedded for the default local address, kafka for any other broker",
    )
    app_id: str = Field(
        "", description="the consumer group, table changelog and transactional ids; unset = "
        "the topic prefix, so two deployments with their own prefixes on one cluster do not "
        "share a group, a table and transactional ids (with one default app id the second "
        "fenced the first's transactions and crashed it: a red-team run)")
    # Both `qlane broker` (Tansu) and `qlane kafka` listen on the default address: a profile
    # chosen by that address alone is a guess, which `detect_profile` settles by asking.
    _profile_unsure: bool = PrivateAttr(False)
    _app_id_defaulted: bool = PrivateAttr(False)
    topic_prefix: str = "qlane"
    partitions: int = Field(4, ge=1)
    replication_factor: int | None = Field(
        None, ge=1, description="of the topics qlane creates; None = the cluster's broker "
        "count, at most 3, settled when the topics are checked (a fixed default of 1 made "
        "every topic of a 3-node cluster RF 1: a red-team run)")
    fetch_max_wait_ms: int | None = Field(None, description="None = the profile's default")
    control_fetch_wait_ms: int = Field(
        250, ge=1, le=10_000, description="how long a worker's reader of the control topic "
        "lets what arrives collect before it reads (noise and drift controls, other workers' "
        "spend, the in-flight marks): at most this stale. Every charge and in-flight mark "
        "used to wake every worker's reader, about one fetch per job per worker",
    )

    security_protocol: str = Field(
        "PLAINTEXT", description="PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"
    )
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    sasl_mechanism: str = Field("PLAIN", description="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    sasl_username: str | None = None
    sasl_password: str | None = Field(None, repr=False)

    web_enabled: bool = True
    web_port: int = 6066
    web_host: str = "127.0.0.1"
    web_max_connections: int = Field(
        128, ge=1, description="connections the worker's web port (/ and /metrics) holds at "
        "once; more are closed as they come (idle ones used up the worker's file descriptors "
        "and good jobs were dead-lettered as OSError: a red-team run)")
    web_idle_timeout_s: float = Field(
        10.0, gt=0, description="a web connection that has not sent a whole request within "
        "this long, or stays idle this long after an answer, is closed (aiohttp's default "
        "held a half-sent request for an hour)")
    log_level: str = "info"
    log_format: LogFormat = Field("text", description="text (Faust's) or json, one object per line")
    event_loop: Literal["asyncio", "uvloop"] = Field(
        "asyncio", description="the worker's event loop: asyncio's own, or uvloop (libuv: its "
        "socket writes and callbacks cost the worker 6-13 % less CPU per job, but a worker's "
        "start and stop took about 12 s longer in the tests, cause not found; "
        "docs/performance.md); without uvloop installed the worker warns and uses asyncio's")
    warm_ups: bool = Field(
        True, description="after start, load in one background thread what the first jobs "
        "and timers would load on their way (mitiq, noisy backends and their readout "
        "calibration, the drift canary's transpiler passes: about 10 CPU s); false: each is "
        "loaded where it is first needed, for short-lived workers (the test suite's)")

    # The job limits (workers.limits.Limits), one setting each: QLANE_MAX_QUBITS, ...
    max_qubits: int = Limits.max_qubits
    min_shots: int = Limits.min_shots
    max_shots: int = Limits.max_shots
    max_circuit_bytes: int = Limits.max_circuit_bytes
    max_parameter_sets: int = Limits.max_parameter_sets
    max_observables: int = Limits.max_observables
    max_observable_terms: int = Limits.max_observable_terms
    max_circuits_per_job: int = Limits.max_circuits_per_job
    max_simulation_seconds: float = Limits.max_simulation_seconds
    # Untrusted programs (issue 11): static bounds counted before parsing, then the sandbox.
    max_gate_instances: int = Limits.max_gate_instances
    max_loop_iterations: int = Limits.max_loop_iterations
    max_clbits: int = Limits.max_clbits
    max_nesting_depth: int = Limits.max_nesting_depth
    sandbox_enabled: bool = Field(
        True, description="parse, validate and transpile submitted programs in sandbox "
        "processes (false: in the worker, for benchmarks and debugging only)",
    )
    sandbox_processes: int = Field(1, ge=1, description="reusable sandbox processes per worker")
    sandbox_wall_s: float = Field(30.0, gt=0, description="wall time per program, then killed")
    sandbox_cpu_s: int = Field(10, ge=1, description="CPU seconds per program (RLIMIT_CPU)")
    sandbox_memory_mb: int = Field(
        1024, ge=64, description="address space above the sandbox's own baseline (RLIMIT_AS)"
    )
    sandbox_output_mb: int = Field(16, ge=1, description="largest prepared job it may return")
    thread_simulation_max_s: float = Field(
        2.0, ge=0, description="where Aer runs in the worker's threads (simulator_process "
        "false, or auto on shared cores), a call estimated above this many seconds of "
        "simulation runs in a simulator process: Aer holds the interpreter lock, so a long "
        "call in a thread stops the worker's event loop and cannot be stopped at the timeout",
    )
    simulator_process: bool = Field(
        "auto", validate_default=True,
        description="run aer.ideal / aer.noisy calls in a sandbox process: Aer holds "
        "the interpreter lock while it simulates, so in the worker it stalls the event loop "
        "and Kafka I/O; there the worker's Kafka work overlaps the simulation (a second core), "
        "and a call past execute_timeout_s kills the process, not a thread left running. "
        "`auto` (the default): on when the worker may use at least "
        f"{SIMULATOR_PROCESS_MIN_CORES} cores (its CPU affinity and cgroup quota, "
        "workers.cores) for itself: off on one core, where the process would only add its "
        "memory, and, while it runs, for every execute batch while other workers on the "
        "host share its cores so that it has fewer than that (workers.host_workers)")
    simulator_process_auto: bool = Field(
        False, exclude=True, description="set from simulator_process: whether it was `auto`, "
        "which a worker re-decides while it runs, by the cores per worker on its host")
    host_workers_dir: str | None = Field(
        None, description="where the workers of a host register, to count the workers that "
        "share its cores (simulator_process=auto); None = /dev/shm/qlane-workers-<uid>")
    simulator_idle_close_s: float = Field(
        60.0, ge=0, description="with simulator_process=auto: a simulator process not used "
        "for this long (other workers arrived and share the host's cores) is closed at the "
        "next execute batch in which no call runs in it, and started again when wanted (a "
        "start takes 5-10 s, which the batch that wants it waits for)")
    simulator_threads: int = Field(
        0, ge=0, le=1024, description="OpenMP threads per Aer call run in the worker's own "
        "threads (the simulator process always runs one); 0 = the whole cores the worker "
        "has, at least 1: its usable cores, with simulator_process=auto divided among the "
        "workers that share them on the host")
    simulator_processes: int = Field(
        1, ge=1, le=64, description="simulator processes per worker (with simulator_process): "
        "a batch is split into as many calls of about equal work, run at once")
    sandbox_attempts: int = Field(
        2, ge=1, description="attempts on a record that kills or times out its sandbox (or "
        "crashes the execute stage), counted across restarts, before it is dead-lettered",
    )
    transpile_cache_size: int = 512
    table_store: Literal["memory", "rocksdb"] = Field(
        "memory", description="where a worker keeps the workflow table: `memory` (Python "
        "objects: about 1 KB of RSS per workflow, never released) or `rocksdb` (on disk in a "
        "fresh directory per process, rebuilt from the changelog at start like `memory`; RSS "
        "stays bounded by the write buffers and block cache below); docs/performance.md",
    )
    table_write_buffer_mb: int = Field(
        1, ge=1, description="rocksdb: write buffer (memtable) per table partition; two per "
        "partition at most")
    table_block_cache_mb: int = Field(
        8, ge=1, description="rocksdb: block cache per table partition")
    handled_records_memory: int = Field(
        100_000, ge=0,
        description="record addresses each worker remembers so a re-fetched record is not "
        "handled twice; 0 disables",
    )

    dlq_guard_consecutive: int = Field(50, ge=0, description="0 disables")
    dlq_guard_ratio: float = Field(0.5, ge=0, le=1, description="0 disables")
    dlq_guard_window: int = Field(200, ge=1)
    dlq_guard_min_records: int = Field(100, ge=1)
    dlq_guard_pause_s: float = Field(30.0, ge=0, description="one hold of a tripped source")
    dlq_guard_hold_budget_s: float = Field(
        60.0, ge=0, description="holds a source may add up to between two successes: what a "
        "burst of bad records can delay the job behind them, whatever their number",
    )

    drift_backends: list[str] = Field(default_factory=lambda: ["aer.noisy"])
    drift_period_s: float = Field(60.0, gt=0, description="seconds between canary rounds")
    drift_shots: int = Field(10_000, ge=100)
    drift_alpha: float = Field(1e-4, gt=0, lt=1, description="false-alarm rate per round")
    drift_alternates: dict[str, str] = Field(
        default_factory=dict, description="route new jobs for a drifted backend elsewhere"
    )

    execute_batch_max: int = Field(32, ge=1, description="jobs per backend call, at most")
    stream_buffer_max: int = Field(
        4096, ge=64, description="records a stage's stream buffers (Faust's "
        "stream_buffer_maxsize); past 80 % of it the partitions feeding it pause, and a poll "
        "(max_poll_records) must fit in the other 20 %. Smaller, a flood on one tenant's "
        "topic queues less ahead of the other tenants' jobs of its lane (1,000 flood jobs: 9 "
        "single jobs behind them waited 17 s with 4096, 10-14 s with 256 and polls of 52: "
        "bench/tenant_fairness.py); not the default until its throughput is measured")
    execute_batch_window_s: float = Field(
        0.05, ge=0, description="while a stage's previous backend call runs, wait up to this "
        "long to fill the next batch; a record that finds the stage free goes at once")
    execute_timeout_s: float = Field(300.0, gt=0, description="a backend call slower fails")
    breaker_failure_threshold: int = Field(5, ge=1)
    breaker_reset_timeout_s: float = Field(30.0, gt=0)
    faults: str = Field("", description='fault injection, e.g. "aer.ideal:failure_rate=0.2"')
    fallback_max_qubits: int = Field(20, ge=1, description="largest classical fallback")
    prices_file: str | None = Field(None, description="JSON/YAML price table (USD)")
    tenant_budgets: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description='USD per tenant: {"acme": 50} (JSON) or acme=50,beta=20',
    )

    # Tenants and priority lanes (topic names: streams/kafka/topics.py; draining:
    # streams/workflow/lanes.py)
    tenants: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description='tenants whose job topics workers read, ["acme","beta"] (JSON) or acme,beta: '
        "qlane.jobs.acme, qlane.jobs.acme-high, qlane.jobs.acme-low",
    )
    lane_burst: int = Field(
        8, ge=1, description="turns in a row a higher lane may take while a lower lane waits"
    )

    # Delivery on Apache Kafka, and shutdown (docs/reliability.md "Exactly-once results").
    processing_guarantee: Literal["at_least_once", "exactly_once"] | None = Field(
        None, description="None = the profile's: exactly_once on kafka, at_least_once on "
        "embedded (Tansu has no transactions)",
    )
    min_insync_replicas: int | None = Field(
        None, ge=1, description="min.insync.replicas of the topics qlane creates (capped at "
        "the replication factor); None = the broker's default",
    )
    max_poll_records: int = Field(
        500, ge=1, le=800, description="records the consumer hands the streams per poll. "
        "Faust delivers a poll's records one by one; a record whose stream buffer (4,096) is "
        "full blocks every other topic's records until that stage makes room, so a poll must "
        "fit in the room Faust leaves above the buffer's pause mark (819)",
    )
    max_uncompressed_batch_mb: int = Field(
        16, ge=1, le=1024, description="a record batch larger than this once decompressed "
        "(or sent uncompressed) is not read but dead-lettered as UnreadableRecordBatch: a "
        "broker limits a batch's compressed size only (streams/kafka/record_batches.py)",
    )
    max_held_records_mb: int = Field(
        256, ge=1, le=65536, description="record values of 1 KiB or more that a worker holds "
        "at once, decompressed (a poll's and its streams' buffers): one that would pass it "
        "is dead-lettered as RecordHeldBack without its value, which stays in its topic for a "
        "replay. 120 batches of 573 bytes, each a 15 MiB zstd record, took a worker from 0.76 "
        "to 2.61 GB in 6 s (streams/kafka/held_values.py)",
    )
    commit_interval_s: float = Field(
        0.5, gt=0, description="seconds between commits; on exactly_once, a stage's output "
        "is visible to read_committed readers (the next stage included) only once committed",
    )
    transaction_linger_s: float | None = Field(
        None, ge=0, le=60, description="on exactly_once, how long a transaction's producer "
        "keeps a partition's records for more before it sends them (Kafka's linger.ms); "
        "a commit sends them at once, and read_committed readers see nothing before it. "
        "None = commit_interval_s: a transaction's records go out in a few requests at its "
        "commit instead of one or two per record",
    )
    idle_commit_s: float = Field(
        0.001, ge=0, description="on exactly_once, a record's transaction is committed this "
        "long after it when no record of its partitions follows, instead of at the next "
        "commit interval: a quiet pipeline's latency; 0 = commit only every commit_interval_s",
    )
    transaction_timeout_s: float = Field(
        600.0, gt=0, le=900, description="the broker aborts a silent worker's open "
        "transaction after this (a new owner fences it at once); above the longest record "
        "(execute_timeout_s), at most the broker's transaction.max.timeout.ms (900 s)",
    )
    record_max_bytes: int = Field(
        1_000_000, ge=MIN_RECORD_BYTES, description="the largest record a worker writes (Faust's "
        "producer_max_request_size). On the kafka profile a worker lowers it at start to the "
        "smallest max.message.bytes of the topics it writes, less RECORD_BATCH_OVERHEAD_BYTES: "
        "a broker that refused larger records lost them (streams/kafka/topic_checks.py)",
    )
    kafka_request_timeout_s: float = Field(
        10.0, gt=6, description="kafka profile: how long a worker's producer and consumer "
        "wait for a broker's answer (Faust's producer_request_timeout and "
        "broker_request_timeout, 1200 s and 90 s by default), above the group session (6 s) "
        "and KRaft's fencing of a silent broker (9 s): with the defaults one frozen node of "
        "three stopped all processing for its whole freeze (51.7 s without a job in a 60 s "
        "freeze), at 10 s the longest gap was 13-18 s; a broker silent for longer fails the "
        "worker's transaction, and the worker stops to be restarted",
    )
    shutdown_timeout_s: float = Field(
        15.0, gt=0, description="a stopping worker exits after this, whatever the broker "
        "does; what it could not commit is handled again by the next owner",
    )
    startup_broker_wait_s: float = Field(
        60.0, ge=0, description="a starting worker retries its broker checks (topics, "
        "ACLs) this long while the broker answers with a retriable error (a node down, a "
        "leader being elected), then exits; 0 = one try",
    )
    broker_warning_interval_s: float = Field(
        30.0, ge=0, description="repeats of a broker connection warning are summed up once "
        "per interval instead of logged one by one; 0 logs every one",
    )

    # Vendor backends (docs/backends.md). The IBM token is a secret: never logged or shown.
    backends: list[str] | None = Field(
        None, description="backends this worker offers; unset = every installed one"
    )
    ibm_mode: Literal["local", "cloud"] = Field(
        "local", description="ibm_runtime.*: local testing mode, or the real service"
    )
    ibm_channel: str | None = None
    ibm_token: SecretStr | None = None
    ibm_instance: str | None = None
    ibm_url: str | None = None
    ibm_secrets_file: str | None = Field(
        None, description="JSON file with token, instance, channel (fills unset values)"
    )

    execute_retries: int = Field(3, ge=0, description="attempts after the first, retryable errors")
    retry_backoff_s: float = 0.2
    retry_backoff_max_s: float = 5.0

    # Throughput (issue 14; measured in docs/performance.md).
    fused_path: Literal["off", "idle", "always", "batch"] = Field(
        "batch", description="when the preprocess stage runs a job's execute and mitigate "
        "steps itself, on its jobs-topic record, instead of handing it on through "
        "stage.execute and stage.mitigate: `batch` (the default) = every job, the jobs that "
        "have arrived when the stage takes (up to execute_batch_max) prepared first and run "
        "in one backend call (streams/agents/fused_batch.py); `idle` = one job at a time, "
        "when no other record waits behind it in its partition (a backlog takes the stages: "
        "streams/agents/fused.py); `always` = every job, one at a time; `off` = every job "
        "through the stage topics",
    )
    status_progress_events: bool | Literal["auto"] = Field(
        "auto", description="the accepted, prepared and executing statuses: `true` publishes "
        "them for every job; `auto` (the default) leaves them out for a job run in a batch's "
        "backend call (fused_path=batch), whose statuses are all sent after that call, with "
        "its terminal one, so they tell a reader nothing it does not learn from that one (3 "
        "records fewer per job: 5 instead of 8); `false` leaves them out for every job: a "
        "primitive job's status() then reads QUEUED until it is done and `qlane cancel` "
        "cannot tell that a job already runs",
    )

    @field_validator("broker")
    @classmethod
    def _normalize_broker(cls, value: str) -> str:
        return normalize_bootstrap(value)

    @model_validator(mode="before")
    @classmethod
    def _note_simulator_process_auto(cls, data: object) -> object:
        if isinstance(data, dict):
            value = data.get("simulator_process", "auto")
            data["simulator_process_auto"] = (isinstance(value, str)
                                              and value.strip().lower() == "auto")
        return data

    @field_validator("tenants", mode="before")
    @classmethod
    def _tenant_list(cls, value: object) -> object:
        # `acme,beta` failed with pydantic's bare "error parsing value" (a red-team run).
        if isinstance(value, str):
            return _json_or_items("QLANE_TENANTS", value, "[")[1]
        return value

    @field_validator("tenant_budgets", mode="before")
    @classmethod
    def _budget_map(cls, value: object) -> object:
        if isinstance(value, str):
            is_json, parsed = _json_or_items("QLANE_TENANT_BUDGETS", value, "{", pairs=True)
            pairs = parsed if is_json else [_budget_item(item) for item in parsed]
            value = {}
            for name, amount in pairs:
                # A second amount for a tenant silently replaced the first (a red-team run).
                if name in value:
                    raise ValueError(f"QLANE_TENANT_BUDGETS names {name!r} twice")
                value[name] = amount
        if isinstance(value, dict):
            for name, amount in value.items():
                if isinstance(amount, bool):  # {"acme": true} was a $1 budget
                    raise ValueError(f"QLANE_TENANT_BUDGETS: the budget of {name!r} is "
                                     f"{amount!r}, not an amount in USD")
        return value

    @field_validator("tenants")
    @classmethod
    def _each_tenant_once(cls, value: list[str]) -> list[str]:
        # A tenant named twice had each of its topics asked for twice in one CreateTopics
        # request, which Kafka refused as a whole (a red-team run).
        return list(dict.fromkeys(value))

    @field_validator("simulator_process", mode="before")
    @classmethod
    def _resolve_simulator_process(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return usable_cores() >= SIMULATOR_PROCESS_MIN_CORES
        return value

    @model_validator(mode="after")
    def _poll_fits_above_the_pause_mark(self) -> Settings:
        room = self.stream_buffer_max - int(self.stream_buffer_max * 0.8)
        if self.max_poll_records > room:
            raise ValueError(
                f"max_poll_records {self.max_poll_records} must fit in the {room} records "
                f"above the pause mark of a stream buffer of {self.stream_buffer_max}: a "
                "record meeting a full buffer blocks every other topic's records")
        return self

    @model_validator(mode="after")
    def _a_batch_fits_what_is_held(self) -> Settings:
        if self.max_held_records_mb < self.max_uncompressed_batch_mb:
            raise ValueError(
                f"max_held_records_mb {self.max_held_records_mb} must be at least "
                f"max_uncompressed_batch_mb {self.max_uncompressed_batch_mb}: a record the "
                "batch limit takes would be held back even with nothing else held")
        return self

    @model_validator(mode="after")
    def _resolve_profile(self) -> Settings:
        if self.profile is None:
            self._profile_unsure = self.broker == DEFAULT_BROKER
            self.profile = "embedded" if self._profile_unsure else "kafka"
        if not self.app_id:
            self._app_id_defaulted = True
            self.app_id = self.topic_prefix
        return self

    @property
    def profile_unsure(self) -> bool:
        """The profile was not given and the broker is the default address (see above)."""
        return self._profile_unsure

    def with_profile(self, profile: str) -> Settings:
        """A copy with this profile, no longer a guess (streams/kafka/security.py
        `detect_profile`)."""
        copy = self.model_copy(update={"profile": profile})
        copy._profile_unsure = False
        return copy

    @property
    def app_id_defaulted(self) -> bool:
        """QLANE_APP_ID was not given: the app id is the topic prefix."""
        return self._app_id_defaulted

    def topic(self, suffix: str) -> str:
        return f"{self.topic_prefix}.{suffix}"

    @property
    def isolation_level(self) -> str:
        """What qlane's own readers use: on Kafka they see committed transactions only."""
        return "read_committed" if self.profile == "kafka" else "read_uncommitted"

    @property
    def effective_processing_guarantee(self) -> str:
        if self.processing_guarantee is not None:
            return self.processing_guarantee
        return "exactly_once" if self.profile == "kafka" else "at_least_once"

    @property
    def effective_transaction_linger_s(self) -> float:
        if self.transaction_linger_s is not None:
            return self.transaction_linger_s
        return self.commit_interval_s

    @property
    def effective_fetch_max_wait_ms(self) -> int:
        if self.fetch_max_wait_ms is not None:
            return self.fetch_max_wait_ms
        if self.profile == "embedded":
            return EMBEDDED_FETCH_MAX_WAIT_MS
        return KAFKA_FETCH_MAX_WAIT_MS

    @property
    def limits(self) -> Limits:
        return Limits(**{name.name: getattr(self, name.name) for name in fields(Limits)})
