"""Runtime control shared by every worker, and the drift monitor.

The `qlane.control` topic is a small replicated table: every worker reads all of it from
the beginning with a group-less consumer and keeps the latest value per key (a Faust
GlobalTable would do the same, but its assignment hung on the embedded broker). Keys (JSON
strings) and values (JSON objects):
  "noise:<backend>" -> {"noise_scale": x}         set by `qlane control noise` (simulated drift)
  "drift:<backend>" -> {"severity", "statistic", "round", "calibration_version", "at_ms"}
                                                   set by the drift timer on the leader
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading

from aiokafka import AIOKafkaConsumer

from schemas.codec import codec
from streams.agents.threads import in_thread
from streams.kafka.compat import reached, stop_consumer
from streams.kafka.flow import rebalances_begun
from streams.kafka.security import kafka_options
from streams.ops import metrics
from streams.ops.logs import printable
from streams.runtime import Runtime, apply_noise_control, now_ms
from streams.workflow import accounting
from streams.workflow.control_records import DRIFT, NOISE, SPEND, decoded, well_formed
from workers.backends.noise import validate_noise_scale
from workers.drift.detection import DriftMonitor, load_statistics, unwatchable
from workers.seeds import derive_seed

log = logging.getLogger("qlane")

CONTROL_FETCH_MIN_BYTES = 1 << 20


def noise_control_record(backend: str, scale: float) -> tuple[bytes, bytes]:
    """Key and value that set a backend's noise scale (what `qlane control noise` sends);
    ValueError for a scale the workers would ignore (not finite, or negative)."""
    scale = validate_noise_scale(scale)
    return json.dumps(NOISE + backend).encode(), json.dumps({"noise_scale": scale}).encode()


def act_on_control(runtime: Runtime, key: str) -> None:
    """What a worker does when a control arrives, not when a job next needs it: the budget
    gauges follow every worker's charges; a readout
    calibration measured in between (the preprocess stage measures it) saw the old noise, and
    a drift alarm dropped the backend's calibrations only where QLANE_DRIFT_ALTERNATES named
    the backend (the only caller of `drifted`): mitigated values were corrected with the
    calibration of before the drift (P(0) 0.0136 for a true 0; a red-team run)."""
    if key.startswith(NOISE):
        backend = key.removeprefix(NOISE)
        if backend in runtime.registry.names():  # one whose noise does not scale: logged there
            apply_noise_control(runtime.registry, runtime.controls, backend)
    elif key.startswith(DRIFT):
        runtime.drifted(key.removeprefix(DRIFT))
    elif key.startswith(SPEND):
        # Another worker's charge: the gauge says what the budget check would now see (it
        # changed only at this worker's own checks: two workers read $3.95 and $0.75 left
        # of a budget overspent by $24.85; a red-team run).
        tenant = key.removeprefix(SPEND).rpartition(":")[0]
        if tenant in runtime.budgets.budgets:
            accounting.show_budget(runtime, tenant)


def continue_rounds(monitor: DriftMonitor, backend_name: str, state: dict | None) -> None:
    """Go on from the round the last leader published. Rounds are seeded by their number, and
    numbered from 1 in each worker: every start or new leader ran the same rounds again, and
    round 10 of aer.noisy's sequence (p = 7.3e-05) was a false alarm 10 periods after each
    (a red-team run)."""
    previous = (state or {}).get("round")
    if (isinstance(previous, int)
            and monitor.rounds.get(backend_name, 0) < previous <= MAX_CONTINUED_ROUND):
        monitor.rounds[backend_name] = previous


# The last published round a leader goes on from: far below what a control record may name
# (MAX_ROUND), so that a forged round near it cannot number the leader's own rounds past what
# the workers read (round 2^62 did: every later round was ignored, drift handling off for
# good; a red-team run). 2^40 rounds is 35,000 years at one a second.
MAX_CONTINUED_ROUND = 2**40


# How long one attempt of the control topic's reader to catch up after a partition
# assignment waits before it is logged and made again.
CATCH_UP_TIMEOUT_S = 10.0
CATCH_UP_RETRY_PAUSE_S = 1.0
# Attempts before the charges go on without it (they waited for good on the embedded
# broker, whose re-created control topic kept the old end offsets: a red-team run).
CATCH_UP_ATTEMPTS = 3


def control_consumer_options(settings) -> dict:
    """The control topic's reader (beside the connection's `kafka_options`). On Kafka it
    reads committed transactions only: a charge is written in its job's transaction, and an
    aborted one was read as spent, then counted again by the job's rerun and written back
    as committed (a red-team run: 7 jobs charged twice after a worker was killed). The
    broker answers when the wait ends or the minimum has collected (which the control
    topic's small records do not reach in that time): one fetch per wait, not one per
    record written."""
    return dict(
        group_id=None, auto_offset_reset="earliest",
        enable_auto_commit=False, isolation_level=settings.isolation_level,
        fetch_max_wait_ms=settings.control_fetch_wait_ms,
        fetch_min_bytes=CONTROL_FETCH_MIN_BYTES,
    )


class ControlReader:
    """The control topic's running reader, for those who must see what is committed now."""

    def __init__(self, consumer) -> None:
        self.consumer = consumer

    async def caught_up(self, timeout_s: float = CATCH_UP_TIMEOUT_S) -> bool:
        """Wait until every record committed on the control topic when called has been read
        (and applied: records are applied without a pause after they are read)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        ends = await self.consumer.end_offsets(list(self.consumer.assignment()))
        while True:
            if await reached(self.consumer, ends):
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)


async def show_budgets_when_caught_up(runtime: Runtime) -> None:
    """Every configured tenant's budget gauges, once the control topic's spends are read: a
    restarted worker had no `qlane_budget_remaining_usd` for a tenant until it charged or
    checked something for it, or another worker did (a red-team run)."""
    while (reader := runtime.control_reader) is not None:
        try:
            if await reader.caught_up():
                for tenant in runtime.budgets.tenants():
                    accounting.show_budget(runtime, tenant)
                return
        except Exception as error:  # noqa: BLE001 - the broker away: try again
            log.debug("budget gauges not shown yet: %s: %s", type(error).__name__, error)
            await asyncio.sleep(1.0)


def keeps(controls: dict, key: str, value: dict) -> bool:
    """Store a control record's value unless it is a partition's spend below the one held:
    a spend total only grows, and one owner's charges can reach the topic out of order (two
    transactional producers of one worker, a red-team run), or an older worker can write its
    stale total over a newer owner's (a rolling upgrade from a release without
    `forget_spend`, a red-team run). Whether it was stored."""
    if key.startswith(SPEND) and value["usd"] < controls.get(key, {}).get("usd", 0.0):
        log.debug("spend %s of %s below the %s held: kept the larger", value["usd"],
                  printable(key)[:200], controls[key]["usd"])
        return False
    if key.startswith(DRIFT) and not later_round(controls.get(key), value):
        log.info("drift round %s of %s after round %s: an earlier leader's, ignored",
                 value["round"], printable(key)[:200], controls[key]["round"])
        return False
    controls[key] = value
    return True


def later_round(held: dict | None, value: dict) -> bool:
    """Whether a drift verdict comes after the one held. A leader paused and resumed (or cut
    off from the group) runs rounds until it hears of the rebalance, numbered from what it
    had read: its round 217 "none", measured at the noise of before its pause, came after
    the new leader's critical round 218 and routed jobs to the drifted backend (a red-team
    run). A leader numbers its rounds past every one it has read, up to
    MAX_CONTINUED_ROUND; a round held above that (forged) does not hold later ones back."""
    held_round = (held or {}).get("round")
    if not isinstance(held_round, int) or held_round > MAX_CONTINUED_ROUND:
        return True
    return value["round"] > held_round


def still_leading(app, rebalances_at_start: int) -> bool:
    """Whether the worker may publish a drift round it began as the group's leader: not
    while a rebalance is under way or after one began since (a resumed leader went on with
    rounds for seconds, some after its partitions were revoked, and published round 64 a
    second time beside the new leader's; a red-team run)."""
    return (app.is_leader() and not getattr(app, "rebalancing", False)
            and rebalances_begun(app) == rebalances_at_start)


def settle_spend(runtime: Runtime) -> asyncio.Task:
    """Start reading the control topic up to its committed end as of now (an assignment):
    every charge a partition's last owner made is then read, whichever key it was. Started
    at the assignment, not at each key's first charge, where the reader's wait for its
    fetch (QLANE_CONTROL_FETCH_WAIT_MS) went into jobs' latency: p99 of one Bell job at a
    time rose from 43 to 184 ms on Kafka (make bench). An attempt that fails (a node lost,
    the reader behind) is logged and made again, up to CATCH_UP_ATTEMPTS (about 30 s): the
    partitions' first charges wait for it. Past that they go on from what was read, and a
    last owner's total read later is added (accounting.add_missed_spend)."""
    async def attempt() -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_TIMEOUT_S
        while runtime.control_reader is None:  # at start: its reader is starting too
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.02)
        try:
            return await runtime.control_reader.caught_up(max(deadline - loop.time(), 0.1))
        except Exception as error:  # noqa: BLE001 - e.g. a node lost: tried again
            log.warning("the control topic's end could not be read after the assignment: "
                        "%s: %s", type(error).__name__, error)
            return False

    async def settled() -> bool:
        for tried in range(1, CATCH_UP_ATTEMPTS + 1):
            if await attempt():
                return True
            if tried == CATCH_UP_ATTEMPTS:
                break
            if runtime.spend_settled is not this:  # a later assignment's catch-up took over
                return await asyncio.shield(runtime.spend_settled)
            log.warning("the control topic's reader has not reached its committed end; "
                        "first charges after the assignment wait for it")
            await asyncio.sleep(CATCH_UP_RETRY_PAUSE_S)
        log.error("the control topic's reader did not reach its committed end in %d "
                  "attempts; charges go on from what it has read, and the last owners' "
                  "totals read later are added as they come", CATCH_UP_ATTEMPTS)
        return False

    this = runtime.spend_settled = asyncio.get_running_loop().create_task(settled())
    return this


def forget_spend(runtime: Runtime, partitions) -> None:
    """A revoked partition's spend is no longer this worker's to write: its next owner
    writes it, and this worker reads it again from the control topic if the partition comes
    back. Kept, its value from before went on under the new owner's charges and wrote over
    them (a red-team run: 9 jobs' charges lost after a worker joined and left)."""
    numbers = {str(tp.partition) for tp in partitions}
    for key in [k for k in runtime.spend_written if k.rpartition(":")[2] in numbers]:
        del runtime.spend_written[key]
        runtime.spend_taken.pop(key, None)


def register(app, runtime: Runtime) -> None:
    settings = runtime.settings
    controls: dict = {}
    runtime.controls = controls

    @app.on_partitions_revoked.connect
    async def on_revoked(app, revoked, **kwargs):
        forget_spend(runtime, revoked)

    @app.on_partitions_assigned.connect
    async def on_assigned(app, assigned, **kwargs):
        settle_spend(runtime)

    @app.task
    async def follow_controls():
        consumer = AIOKafkaConsumer(runtime.names.control, **kafka_options(settings),
                                    **control_consumer_options(settings))
        await consumer.start()
        runtime.control_reader = ControlReader(consumer)
        shown = asyncio.ensure_future(show_budgets_when_caught_up(runtime))
        try:
            async for record in consumer:
                key, value = decoded(record.key, record.value)
                if not well_formed(key, value):
                    log.warning("ignored a malformed control record at offset %d", record.offset)
                    continue
                if key.startswith(SPEND):
                    accounting.add_missed_spend(runtime, key, value, record.timestamp)
                if not keeps(controls, key, value):
                    continue
                try:
                    act_on_control(runtime, key)
                except Exception as error:  # noqa: BLE001 - a control never stops the worker
                    log.warning("control %s not acted on: %s: %s", printable(key)[:200],
                                type(error).__name__, error)
        finally:
            shown.cancel()
            runtime.control_reader = None
            await stop_consumer(consumer)
    monitor = DriftMonitor(alpha=settings.drift_alpha, shots=settings.drift_shots)
    monitor_lock = threading.Lock()

    for backend in settings.drift_backends:
        for severity in (*metrics.DRIFT_SEVERITIES, "failed"):
            metrics.DRIFT_ROUNDS.labels(backend, severity).inc(0)

    refused: dict[str, str | None] = {}

    def watched(backend_name: str) -> bool:
        """Whether the monitor can watch this configured backend (an unknown name, or a noisy
        backend without a calibration, is logged once as an error and left out)."""
        if backend_name not in refused:
            try:
                backend = runtime.registry.get(backend_name)
            except Exception as error:  # noqa: BLE001 (any reason a name is not a backend)
                refused[backend_name] = f"not a backend here ({error})"
            else:
                refused[backend_name] = unwatchable(backend)
            if refused[backend_name] is not None:
                log.error("QLANE_DRIFT_BACKENDS: %s is not watched: %s", backend_name,
                          refused[backend_name])
        return refused[backend_name] is None

    def warm_up_drift_monitor() -> None:
        """Transpile each canary and compute its baseline at start, on every worker (any may
        become the leader). The first preset pass manager imports every installed transpiler
        plugin: about 37 MiB and, in a worker, 1.7 s, once (docs/performance.md). In the first
        round, 60 s in, the worker's RSS stepped up in the middle of its traffic."""
        load_statistics()
        with monitor_lock:
            for backend_name in filter(watched, settings.drift_backends):
                backend = runtime.registry.get(backend_name)
                monitor.canary_circuit(backend)
                monitor.baseline(backend)

    runtime.warm_ups.add("drift monitor", warm_up_drift_monitor)

    def canary_round(backend_name: str, round_number: int):
        backend = runtime.registry.get(backend_name)
        # Per deployment (its app id), per round: the same seeds in every deployment made
        # aer.noisy's round 10 (p = 7.3e-05) a false alarm in each, 10 periods in.
        seed = derive_seed(
            f"drift:{settings.app_id}:{backend_name}:{backend.calibration_version}", round_number)
        with monitor_lock:  # the monitor's transpile cache is not thread-safe
            return monitor.run_round(backend, seed)

    @app.timer(interval=settings.drift_period_s)
    async def forget_drift_unless_leader():
        # The leadership moves on a rebalance while the old leader lives on: its last alarm
        # would keep QlaneDriftAlarm firing whatever the new leader's rounds find.
        if not app.is_leader():
            metrics.forget_drift_round()

    @app.timer(interval=settings.drift_period_s, on_leader=True)
    async def drift_rounds():
        for backend_name in filter(watched, settings.drift_backends):
            runtime.apply_controls(backend_name)
            rebalances = rebalances_begun(app)
            if not still_leading(app, rebalances):
                return
            continue_rounds(monitor, backend_name, controls.get(DRIFT + backend_name))
            round_number = monitor.rounds.get(backend_name, 0) + 1
            try:
                report = await in_thread(runtime, canary_round, backend_name, round_number)
                at_ms = now_ms()
                event = codec("DriftEvent").encode(report.to_event(at_ms))
            except Exception as error:  # noqa: BLE001 - a backend's failure, not the worker's
                # Raised out of the timer, it crashed the worker (exit 1 within a minute of
                # a backend outage, then the next leader's: a red-team run).
                metrics.DRIFT_ROUNDS.labels(backend_name, "failed").inc()
                log.warning("drift round on %s failed, skipped: %s: %s", backend_name,
                            type(error).__name__, str(error)[:200])
                continue
            if not still_leading(app, rebalances):
                log.info("drift round %d on %s not published: the group is rebalancing, "
                         "and this worker may no longer lead it", round_number, backend_name)
                return
            await runtime.send("drift", backend_name, event)
            metrics.DRIFT_STATISTIC.labels(backend_name).set(report.statistic)
            metrics.DRIFT_THRESHOLD.labels(backend_name).set(report.threshold)
            metrics.DRIFT_ALARM.labels(backend_name).set(1 if report.alarm else 0)
            metrics.DRIFT_ROUNDS.labels(backend_name, report.severity).inc()
            state = {
                "severity": report.severity, "statistic": report.statistic,
                "round": report.round, "calibration_version": report.calibration_version,
                "at_ms": at_ms, "moved": report.moved,
            }
            await runtime.send(
                "control", json.dumps(DRIFT + backend_name), json.dumps(state).encode()
            )
            if report.alarm:
                log.warning("drift on %s: %s=%.2f > %.2f (p=%.2g), round %d", backend_name,
                            report.statistic_name, report.statistic, report.threshold,
                            report.p_value, report.round)
