"""The control topic's reader in each worker (streams/workflow/control.py)."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest

from streams.kafka.topics import TopicNames
from streams.ops.warm_up import WarmUps
from streams.settings import Settings
from streams.workflow import control


class FakeConsumer:
    built: list[dict] = []

    def __init__(self, *topics, **options) -> None:
        FakeConsumer.built.append({"topics": topics, **options})
        self._fetcher = None
        self.records = [
            SimpleNamespace(key=json.dumps("noise:aer.noisy").encode(),
                            value=json.dumps({"noise_scale": 1.5}).encode(), offset=0),
            SimpleNamespace(key=b"not json", value=b"{", offset=1),
        ]

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def __aiter__(self):
        return self

    async def __anext__(self):
        if not self.records:
            raise StopAsyncIteration
        return self.records.pop(0)


class FakeRegistry:
    def __init__(self) -> None:
        self.scales: dict[str, float] = {}

    def names(self) -> list[str]:
        return ["aer.ideal", "aer.noisy"]

    def noise_scale(self, name: str) -> float:
        return self.scales.get(name, 1.0)

    def set_noise_scale(self, name: str, scale: float) -> None:
        if name == "aer.ideal":
            raise ValueError("no calibrated noise model")
        self.scales[name] = scale


def test_the_control_reader_lets_records_collect_for_its_wait_and_keeps_the_latest(monkeypatch):
    """One fetch per `control_fetch_wait_ms`, not one per record: its minimum size is more
    than the wait collects, so the broker answers when the wait ends."""
    monkeypatch.setattr(control, "AIOKafkaConsumer", FakeConsumer)
    FakeConsumer.built.clear()
    settings = Settings(topic_prefix="ctl", control_fetch_wait_ms=300)
    runtime = SimpleNamespace(settings=settings, names=TopicNames.from_settings(settings),
                              warm_ups=WarmUps(),
                              registry=FakeRegistry())
    tasks = []
    app = SimpleNamespace(task=lambda function: tasks.append(function) or function,
                          timer=lambda **options: (lambda function: function),
                          on_partitions_revoked=SimpleNamespace(connect=lambda function: function),
                          on_partitions_assigned=SimpleNamespace(connect=lambda function: function))
    control.register(app, runtime)
    (follow_controls,) = tasks
    asyncio.run(follow_controls())
    (options,) = FakeConsumer.built
    assert options["topics"] == ("ctl.control",)
    assert options["fetch_max_wait_ms"] == 300
    assert options["fetch_min_bytes"] >= 1 << 20
    assert runtime.controls == {"noise:aer.noisy": {"noise_scale": 1.5}}  # the bad one ignored
    assert runtime.registry.scales == {"aer.noisy": 1.5}  # applied when it came
    assert Settings().control_fetch_wait_ms == 250


class DroppedCalibrations:
    def __init__(self) -> None:
        self.dropped: list[str] = []

    def invalidate(self, backend_name: str) -> int:
        self.dropped.append(backend_name)
        return 1


def test_a_drift_alarm_drops_the_backends_readout_calibration_when_it_comes():
    """Only the alternates' routing asked `drifted`: without QLANE_DRIFT_ALTERNATES a drift
    alarm never dropped the calibration, and mitigated values used the one from before."""
    from streams.runtime import Runtime

    runtime = SimpleNamespace(controls={}, drift_seen_ms={}, registry=FakeRegistry(),
                              readout_cache=DroppedCalibrations())
    runtime.drifted = lambda backend: Runtime.drifted(runtime, backend)
    alarm = {"severity": "critical", "statistic": 9.0, "round": 4,
             "calibration_version": "v", "at_ms": 100}
    for at_ms in (100, 100, 160):  # the same alarm read twice, then the next round's
        runtime.controls["drift:aer.noisy"] = {**alarm, "at_ms": at_ms}
        control.act_on_control(runtime, "drift:aer.noisy")
    assert runtime.readout_cache.dropped == ["aer.noisy", "aer.noisy"]


def test_the_first_round_as_calibrated_again_drops_what_was_measured_during_drift():
    """A readout calibration measured during drift stayed in use after it (mitigated
    <ZZZZZ> 1.19 ± 0.007 for an exact 1.0), and one from before a rise in the success rate,
    which never alarms, stayed too (1.08 ± 0.005): a red-team run."""
    from streams.runtime import Runtime

    runtime = SimpleNamespace(controls={}, drift_seen_ms={}, registry=FakeRegistry(),
                              readout_cache=DroppedCalibrations())
    runtime.drifted = lambda backend: Runtime.drifted(runtime, backend)
    calm = {"severity": "none", "statistic": 0.1, "round": 4, "calibration_version": "v",
            "at_ms": 100, "moved": False}
    rounds = [calm, {**calm, "severity": "critical", "moved": True, "at_ms": 160},
              {**calm, "at_ms": 220}, {**calm, "at_ms": 280},
              {**calm, "statistic": -19.3, "moved": True, "at_ms": 340},
              {**calm, "statistic": -19.0, "moved": True, "at_ms": 400},
              {**calm, "at_ms": 460}]
    dropped = []
    for state in rounds:
        runtime.controls["drift:aer.noisy"] = state
        control.act_on_control(runtime, "drift:aer.noisy")
        dropped.append(len(runtime.readout_cache.dropped))
    assert dropped == [0, 1, 2, 2, 3, 4, 5]
    assert runtime.drifted("aer.noisy") is False


def test_a_noise_control_for_a_backend_without_scalable_noise_is_ignored():
    runtime = SimpleNamespace(controls={"noise:aer.ideal": {"noise_scale": 2.0},
                                        "noise:gone": {"noise_scale": 2.0}},
                              registry=FakeRegistry())
    control.act_on_control(runtime, "noise:aer.ideal")
    control.act_on_control(runtime, "noise:gone")
    assert runtime.registry.scales == {}


def test_a_new_leader_goes_on_from_the_last_published_round():
    """Rounds are seeded by their number: numbered from 1 again at every start, the same
    rounds ran again, and aer.noisy's round 10 (p = 7.3e-05) alarmed after every start."""
    from workers.drift.detection import DriftMonitor

    monitor = DriftMonitor()
    control.continue_rounds(monitor, "aer.noisy", None)
    assert monitor.rounds.get("aer.noisy", 0) == 0
    control.continue_rounds(monitor, "aer.noisy", {"round": 41, "severity": "none"})
    assert monitor.rounds["aer.noisy"] == 41
    monitor.rounds["aer.noisy"] = 50  # its own rounds since: never back
    control.continue_rounds(monitor, "aer.noisy", {"round": 41})
    assert monitor.rounds["aer.noisy"] == 50


def test_another_workers_charge_moves_the_budget_gauge():
    """Each worker set the gauge at its own checks only: two workers read $3.95 and $0.75
    left of a budget overspent by $24.85 (a red-team run)."""
    from streams.ops import metrics
    from workers.cost.model import TenantBudgets

    runtime = SimpleNamespace(controls={}, spend_written={},
                              budgets=TenantBudgets({"gauged": 100.0}))
    for partition, usd in ((0, 60.0), (3, 64.85)):
        key = f"spend:gauged:{partition}"
        runtime.controls[key] = {"usd": usd}
        control.act_on_control(runtime, key)
    remaining = metrics.REGISTRY.get_sample_value("qlane_budget_remaining_usd",
                                                  {"tenant": "gauged"})
    assert remaining == pytest.approx(-24.85)
    control.act_on_control(runtime, "spend:unconfigured:0")  # no label for it
    assert metrics.REGISTRY.get_sample_value("qlane_budget_remaining_usd",
                                             {"tenant": "unconfigured"}) is None


def test_a_started_worker_shows_every_tenants_budget_once_it_has_read_the_spends():
    """A restarted worker had no remaining-budget series for a tenant until it charged or
    checked something for it (a red-team run with two workers and a rolling restart)."""
    from streams.ops import metrics
    from workers.cost.model import TenantBudgets

    class Reader:
        answers = [False, False, True]

        async def caught_up(self):
            return self.answers.pop(0)

    runtime = SimpleNamespace(controls={"spend:quiet:2": {"usd": 1.25}}, spend_written={},
                              budgets=TenantBudgets({"quiet": 10.0, "idle": 3.0}),
                              control_reader=Reader())
    asyncio.run(control.show_budgets_when_caught_up(runtime))
    sample = metrics.REGISTRY.get_sample_value
    assert sample("qlane_budget_remaining_usd", {"tenant": "quiet"}) == pytest.approx(8.75)
    assert sample("qlane_budget_remaining_usd", {"tenant": "idle"}) == pytest.approx(3.0)


def test_the_control_reader_sees_committed_charges_only_on_kafka():
    """A charge is written in its job's transaction: an aborted one was read as spent, the
    job's rerun charged it again and wrote the sum back as committed (a red-team run)."""
    kafka = Settings(broker="localhost:1", profile="kafka")
    embedded = Settings(broker="localhost:1", profile="embedded")
    assert control.control_consumer_options(kafka)["isolation_level"] == "read_committed"
    assert control.control_consumer_options(embedded)["isolation_level"] == "read_uncommitted"


def charging_runtime(controls: dict, spend_written: dict):
    from workers.cost.model import TenantBudgets

    class Prices:
        @staticmethod
        def actual(backend, circuits, shots, seconds):
            return 0.00375

    sent = []

    async def send(topic, key, value):
        sent.append((topic, key, value))

    return SimpleNamespace(controls=controls, spend_written=spend_written, reserved_usd={},
                           spend_taken={}, writer_id="this-worker",
                           budgets=TenantBudgets({"acme": 10.0}), prices=Prices(),
                           send=send, sent=sent)


def charge(runtime, partition):
    from streams.workflow import accounting

    prepared = SimpleNamespace(backend="aer.ideal", shots=100, tasks=[object()])
    return asyncio.run(accounting.charge(
        runtime, request={"tenant": "acme", "workflow_id": "w"}, prepared=prepared,
        partition=partition, simulated_seconds=0.0, estimate=0.0,
        charged_backend="aer.ideal"))


def test_a_partition_that_comes_back_goes_on_from_its_last_owners_spend():
    """A worker kept its own total of a partition it lost, and when the partition came back
    wrote it over the other owner's charges in between (9 jobs' charges lost; red-team)."""
    from aiokafka import TopicPartition

    runtime = charging_runtime(controls={}, spend_written={})
    charge(runtime, 1)
    charge(runtime, 10)
    assert runtime.spend_written == {"spend:acme:1": 0.00375, "spend:acme:10": 0.00375}
    control.forget_spend(runtime, {TopicPartition("jobs", 1)})
    assert runtime.spend_written == {"spend:acme:10": 0.00375}
    runtime.controls["spend:acme:1"] = {"usd": 0.0375}  # the other owner's charges since
    charge(runtime, 1)
    assert runtime.spend_written["spend:acme:1"] == pytest.approx(0.04125)
    assert runtime.sent[-2][2] == b'{"usd": 0.04125, "by": "this-worker"}'


def test_a_charge_that_takes_over_a_partition_waits_for_the_reader_first():
    class Consumer:
        def __init__(self, runtime):
            self.runtime, self.at = runtime, 0

        def assignment(self):
            return {"control-0"}

        async def end_offsets(self, partitions):
            return {tp: 3 for tp in partitions}

        async def position(self, tp):
            self.at += 1  # one record read, and applied, per look
            self.runtime.controls["spend:acme:2"] = {"usd": 0.01 * self.at}
            return self.at

    runtime = charging_runtime(controls={}, spend_written={})
    runtime.control_reader = control.ControlReader(Consumer(runtime))
    charge(runtime, 2)
    assert runtime.spend_written["spend:acme:2"] == pytest.approx(0.03 + 0.00375)

    class Stuck(Consumer):
        async def position(self, tp):
            return 0

    runtime = charging_runtime(controls={"spend:acme:2": {"usd": 1.0}}, spend_written={})
    runtime.control_reader = control.ControlReader(Stuck(runtime))
    assert asyncio.run(runtime.control_reader.caught_up(timeout_s=0.1)) is False


def test_a_spend_total_read_lower_than_the_one_held_is_not_taken():
    """A worker of the previous release wrote its stale total over the new owner's after a
    partition came back (acme's spend fell from 8.78 to 1.77 in a rolling upgrade), and one
    worker's charges can reach the topic out of order (a red-team run)."""
    controls: dict = {}
    assert control.keeps(controls, "spend:acme:0", {"usd": 8.77625})
    assert not control.keeps(controls, "spend:acme:0", {"usd": 1.765})
    assert controls["spend:acme:0"] == {"usd": 8.77625}
    assert control.keeps(controls, "spend:acme:0", {"usd": 8.78})
    assert control.keeps(controls, "noise:aer.noisy", {"noise_scale": 2.0})
    assert control.keeps(controls, "noise:aer.noisy", {"noise_scale": 1.0})  # not spend
    assert controls["noise:aer.noisy"] == {"noise_scale": 1.0}


def drift(round_number: int, severity: str) -> dict:
    return {"severity": severity, "statistic": 0.0, "round": round_number,
            "calibration_version": "v1", "at_ms": 1_000 + round_number, "moved": False}


def test_an_earlier_leaders_drift_round_does_not_replace_a_later_verdict():
    """A leader resumed after a pause published round 217 "none" (measured at the noise of
    before its pause) after the new leader's critical round 218, and jobs went to the
    drifted backend until the next round (a red-team run)."""
    controls: dict = {}
    key = "drift:aer.noisy"
    assert control.keeps(controls, key, drift(218, "critical"))
    assert not control.keeps(controls, key, drift(217, "none"))
    assert not control.keeps(controls, key, drift(218, "none"))  # the same round twice
    assert controls[key]["severity"] == "critical"
    assert control.keeps(controls, key, drift(219, "none"))
    # A forged round past what a leader goes on from holds no later round back.
    assert control.keeps(controls, key, drift(control.MAX_CONTINUED_ROUND + 1, "none"))
    assert control.keeps(controls, key, drift(220, "critical"))


def test_a_drift_round_is_published_only_by_a_leader_no_rebalance_has_touched():
    """A resumed leader went on with rounds for seconds, some after its partitions were
    revoked, and published a round a second time beside the new leader's (a red-team run)."""
    app = SimpleNamespace(is_leader=lambda: True, rebalancing=False, rebalancing_count=3)
    assert control.still_leading(app, 3)
    assert not control.still_leading(app, 2)  # a rebalance began since the round began
    assert not control.still_leading(SimpleNamespace(**{**vars(app), "rebalancing": True}), 3)
    assert not control.still_leading(
        SimpleNamespace(**{**vars(app), "is_leader": lambda: False}), 3)


def test_the_reader_catches_up_once_per_assignment_not_at_each_keys_first_charge():
    """Each key's first charge waited for the reader's fetch: one Bell job at a time had a
    p99 of 184 ms on Kafka, 43 ms before (make bench)."""
    from streams.workflow import accounting

    class Consumer:
        looks = 0

        def assignment(self):
            return {"control-0"}

        async def end_offsets(self, partitions):
            Consumer.looks += 1
            return {tp: 1 for tp in partitions}

        async def position(self, tp):
            return 1

    runtime = charging_runtime(controls={"spend:acme:3": {"usd": 0.5}}, spend_written={})
    runtime.control_reader = control.ControlReader(Consumer())
    prepared = SimpleNamespace(backend="aer.ideal", shots=100, tasks=[object()])

    async def assigned_then_charged():
        control.settle_spend(runtime)
        for partition in (3, 4, 3):
            await accounting.charge(
                runtime, request={"tenant": "acme", "workflow_id": "w"}, prepared=prepared,
                partition=partition, simulated_seconds=0.0, estimate=0.0,
                charged_backend="aer.ideal")

    asyncio.run(assigned_then_charged())
    assert Consumer.looks == 1
    assert runtime.spend_written["spend:acme:3"] == pytest.approx(0.5 + 2 * 0.00375)


def test_a_catch_up_that_fails_is_tried_again_and_the_charges_wait_for_it(monkeypatch):
    """A failed catch-up went on from what was read: the last owner had committed 5.0, the
    new owner read 1.0 and wrote 1.445, 1.89, 2.335, each ignored by every other reader as
    lower; those charges were lost for good (a red-team run)."""
    from aiokafka.errors import KafkaTimeoutError

    from streams.workflow import accounting

    monkeypatch.setattr(control, "CATCH_UP_RETRY_PAUSE_S", 0.01)

    class Consumer:
        def __init__(self, runtime):
            self.runtime, self.asked = runtime, 0

        def assignment(self):
            return {"control-0"}

        async def end_offsets(self, partitions):
            self.asked += 1
            if self.asked < 3:
                raise KafkaTimeoutError("no answer")
            return {tp: 1 for tp in partitions}

        async def position(self, tp):
            self.runtime.controls["spend:acme:5"] = {"usd": 5.0}  # the last owner's, read now
            return 1

    runtime = charging_runtime(controls={"spend:acme:5": {"usd": 1.0}}, spend_written={})
    consumer = Consumer(runtime)
    runtime.control_reader = control.ControlReader(consumer)
    prepared = SimpleNamespace(backend="aer.ideal", shots=100, tasks=[object()])

    async def assigned_then_charged():
        control.settle_spend(runtime)
        await accounting.charge(
            runtime, request={"tenant": "acme", "workflow_id": "w"}, prepared=prepared,
            partition=5, simulated_seconds=0.0, estimate=0.0, charged_backend="aer.ideal")

    asyncio.run(assigned_then_charged())
    assert consumer.asked == 3
    assert runtime.spend_written["spend:acme:5"] == pytest.approx(5.00375)


def test_two_first_charges_of_a_key_during_the_catch_up_both_count():
    """Both waited for the catch-up, then each set the key from the control topic: the
    second reset the first's charge (1.0 and two charges of 0.445 wrote 1.445 twice)."""
    from streams.workflow import accounting

    runtime = charging_runtime(controls={"spend:acme:0": {"usd": 1.0}}, spend_written={})
    prepared = SimpleNamespace(backend="aer.ideal", shots=100, tasks=[object()])

    async def two_charges():
        runtime.spend_settled = asyncio.get_running_loop().create_future()
        charges = [asyncio.create_task(accounting.charge(
            runtime, request={"tenant": "acme", "workflow_id": f"w{i}"}, prepared=prepared,
            partition=0, simulated_seconds=0.0, estimate=0.0, charged_backend="aer.ideal"))
            for i in range(2)]
        await asyncio.sleep(0.01)
        runtime.spend_settled.set_result(True)
        await asyncio.gather(*charges)

    asyncio.run(two_charges())
    assert runtime.spend_written["spend:acme:0"] == pytest.approx(1.0075)
    totals = [json.loads(value)["usd"] for topic, _, value in runtime.sent if topic == "control"]
    assert totals == pytest.approx([1.00375, 1.0075])


def test_a_catch_up_that_never_finishes_ends_and_the_missed_totals_are_added_later(
        monkeypatch):
    """On the embedded broker a re-created control topic kept its old end offsets, and the
    first charges after an assignment waited for good (a red-team run). They now go on after
    CATCH_UP_ATTEMPTS; the last owner's totals read afterwards are added, so what it charged
    is not lost (5.0 committed, 1.0 read: 2.335 was written for 6.335)."""
    from streams.workflow import accounting

    monkeypatch.setattr(control, "CATCH_UP_RETRY_PAUSE_S", 0.01)
    monkeypatch.setattr(control, "CATCH_UP_TIMEOUT_S", 0.05)

    class Behind:
        looks = 0

        def assignment(self):
            return {"control-0"}

        async def end_offsets(self, partitions):
            Behind.looks += 1
            return {tp: 47 for tp in partitions}

        async def position(self, tp):
            return 4

    runtime = charging_runtime(controls={"spend:acme:5": {"usd": 1.0}}, spend_written={})
    runtime.control_reader = control.ControlReader(Behind())
    prepared = SimpleNamespace(backend="aer.ideal", shots=100, tasks=[object()])

    async def assigned_then_charged():
        control.settle_spend(runtime)
        for _ in range(2):
            await accounting.charge(
                runtime, request={"tenant": "acme", "workflow_id": "w"}, prepared=prepared,
                partition=5, simulated_seconds=0.0, estimate=0.0, charged_backend="aer.ideal")

    asyncio.run(assigned_then_charged())
    assert Behind.looks == control.CATCH_UP_ATTEMPTS
    assert runtime.spend_written["spend:acme:5"] == pytest.approx(1.0075)
    taken_ms = runtime.spend_taken["spend:acme:5"][1]
    late = {"usd": 5.0, "by": "last-owner"}
    accounting.add_missed_spend(runtime, "spend:acme:5", late, taken_ms - 5)
    assert runtime.spend_written["spend:acme:5"] == pytest.approx(5.0075)
    accounting.add_missed_spend(runtime, "spend:acme:5", {"usd": 4.0, "by": "last-owner"},
                                taken_ms - 9)  # an older total of the same owner
    accounting.add_missed_spend(runtime, "spend:acme:5", {"usd": 9.0, "by": "other"},
                                taken_ms + 5)  # written after the takeover: no missed charge
    accounting.add_missed_spend(runtime, "spend:acme:5", {"usd": 7.0, "by": "this-worker"},
                                taken_ms - 5)  # its own
    assert runtime.spend_written["spend:acme:5"] == pytest.approx(5.0075)
    accounting.add_missed_spend(runtime, "spend:acme:5", {"usd": 5.5, "by": "last-owner"},
                                taken_ms - 1)
    assert runtime.spend_written["spend:acme:5"] == pytest.approx(5.5075)


def test_a_forged_drift_round_past_an_avro_long_is_not_acted_on():
    """`round` 2^63 - 1 stopped each leader at its next round (its DriftEvent's round did
    not fit a long), at every start again: a red-team run."""
    from streams.workflow.control_records import MAX_ROUND, well_formed
    from workers.drift.detection import DriftMonitor

    forged = {"severity": "none", "at_ms": 1, "round": 2**63 - 1}
    assert not well_formed("drift:aer.noisy", forged)
    assert not well_formed("drift:aer.noisy", {**forged, "round": -1})
    assert well_formed("drift:aer.noisy", {**forged, "round": 41})
    assert well_formed("drift:aer.noisy", {"severity": "none", "at_ms": 1})  # older records
    monitor = DriftMonitor()
    control.continue_rounds(monitor, "aer.noisy", forged)
    assert monitor.rounds.get("aer.noisy", 0) == 0
    # Read, but not gone on from: the leader's own rounds would pass what workers read, and
    # every later round was ignored (drift handling off for good: a red-team run).
    assert well_formed("drift:aer.noisy", {**forged, "round": MAX_ROUND})
    control.continue_rounds(monitor, "aer.noisy", {**forged, "round": MAX_ROUND})
    assert monitor.rounds.get("aer.noisy", 0) == 0
    control.continue_rounds(monitor, "aer.noisy", {**forged, "round": 41})
    assert monitor.rounds["aer.noisy"] == 41
    assert well_formed("drift:aer.noisy", {**forged, "round": control.MAX_CONTINUED_ROUND + 1})


def test_a_control_record_nested_past_the_stack_is_not_json_to_any_reader():
    """200 KB of "[" on the control topic stopped every worker at every start: its
    RecursionError was not among the errors the readers caught (a forged record)."""
    from streams.workflow import poison
    from streams.workflow.control_records import decoded, well_formed
    from streams.workflow.table_store import TableEntryCodec, TableKeyCodec

    deep = b"[" * 200_000
    assert decoded(b'"noise:aer.noisy"', deep) == (None, None)
    assert not well_formed(*decoded(deep, b"{}"))
    entries = {}
    poison._apply(entries, b'"' + poison.PREFIX.encode() + b'x"', deep)
    poison._apply(entries, deep, b"{}")
    assert entries == {}
    assert TableEntryCodec()._loads(deep) is None
    assert TableKeyCodec()._loads(deep) is None


def test_a_noise_control_for_a_backend_that_cannot_scale_leaves_its_jobs_alone():
    """Applied before each job (the stages' apply_controls), its ValueError escaped and every
    worker stopped, at every start (a red-team run)."""
    from streams.runtime import apply_noise_control

    registry = FakeRegistry()
    controls = {"noise:aer.ideal": {"noise_scale": 5.0}, "noise:aer.noisy": {"noise_scale": 2.0}}
    apply_noise_control(registry, controls, "aer.ideal")
    apply_noise_control(registry, controls, "aer.noisy")
    assert registry.scales == {"aer.noisy": 2.0}


def test_an_attempts_record_whose_time_is_no_count_is_not_acted_on():
    """`at_ms` "x" met another record's time in a comparison: a job failed with a TypeError
    after each rebalance (a forged record, a red-team run)."""
    from streams.workflow.control_records import well_formed

    good = {"offsets": {"14": 1}, "reason": "", "at_ms": 1}
    assert well_formed("attempts:execute:t.qlane.jobs:3", good)
    assert well_formed("attempts:execute:t.qlane.jobs:3", {"offsets": {}, "reason": ""})
    for at_ms in ("x", -1, 1.5, None, [1]):
        assert not well_formed("attempts:execute:t.qlane.jobs:3", {**good, "at_ms": at_ms})
