"""Attempt counts of records that kill what handles them (streams/workflow/poison.py), on a
fake ledger."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import pytest
from aiokafka.errors import KafkaTimeoutError, NodeNotReadyError

from streams.workflow import poison
from streams.workflow.deadletter import SourceRecord
from streams.workflow.poison import (
    InFlight,
    _apply,
    ledger_key,
    withdraw_in_flight_marks,
)


def source(offset: int, partition: int = 0) -> SourceRecord:
    return SourceRecord("q.stage.execute", partition, offset, None, b"k", b"v", ())


class FakeLedger:
    """AttemptLedger's interface, keeping what a restarted worker would read back."""

    def __init__(self, entries: dict | None = None) -> None:
        self.entries = dict(entries or {})
        self.writes: list[tuple[str, dict, bool]] = []

    async def tries(self, stage, record):
        entry = self.entries.get(ledger_key(stage, record.topic, record.partition)) or {}
        return int(entry.get("offsets", {}).get(str(record.offset), 0)), entry.get("reason", "")

    async def write(self, stage, topic, partition, offsets, reason="", flush=True):
        key = ledger_key(stage, topic, partition)
        self.entries[key] = {"offsets": {str(o): n for o, n in offsets.items()},
                             "reason": reason}
        self.writes.append((key, dict(offsets), flush))


def runtime(ledger: FakeLedger, attempts: int = 2):
    return SimpleNamespace(attempts=ledger, settings=SimpleNamespace(sandbox_attempts=attempts),
                           in_flight_calls=set(), stop_asked=False)


def test_a_batch_is_marked_before_its_call_and_cleared_after():
    ledger = FakeLedger()
    records = [source(5), source(6), source(7, partition=1)]
    flight = InFlight(runtime(ledger), "execute", records)

    async def go():
        await flight.load()
        assert flight.poisoned() == [] and not flight.suspects()
        await flight.running([r.address for r in records])
        # What a worker killed by the call leaves behind: one try on each record.
        assert ledger.entries[ledger_key("execute", "q.stage.execute", 0)]["offsets"] == {
            "5": 1, "6": 1}
        assert ledger.writes[-1][2] is True  # flushed before the call
        await flight.finished([r.address for r in records])
        assert all(entry["offsets"] == {} for entry in ledger.entries.values())

    asyncio.run(go())


def test_after_a_crash_suspects_run_alone_and_keep_their_counts():
    key = ledger_key("execute", "q.stage.execute", 0)
    ledger = FakeLedger({key: {"offsets": {"5": 1, "6": 1}, "reason": "in flight"}})
    records = [source(5), source(6)]
    flight = InFlight(runtime(ledger, attempts=3), "execute", records)

    async def go():
        await flight.load()
        assert flight.suspects() and flight.poisoned() == []
        await flight.running([records[0].address])  # 5 runs alone and kills the worker
        assert ledger.entries[key]["offsets"] == {"5": 2, "6": 1}

    asyncio.run(go())


def test_a_record_at_its_attempts_is_poison_and_not_run():
    key = ledger_key("execute", "q.stage.execute", 0)
    ledger = FakeLedger({key: {"offsets": {"5": 2}, "reason": "in flight"}})
    records = [source(5), source(6)]
    flight = InFlight(runtime(ledger, attempts=2), "execute", records)

    async def go():
        await flight.load()
        assert flight.poisoned() == [records[0].address]
        error = flight.poison_error(records[0].address)
        assert error.reason == "PoisonRecord" and error.attempts == 2
        flight.done(records[0].address)
        await flight.running([records[1].address])
        assert ledger.entries[key]["offsets"] == {"6": 1}

    asyncio.run(go())


def test_the_ledger_reads_only_attempt_keys_and_tombstones():
    entries: dict = {}
    _apply(entries, json.dumps("noise:aer.noisy").encode(), b'{"noise_scale": 2}')
    _apply(entries, json.dumps("attempts:preprocess:q.jobs:0").encode(),
           b'{"offsets": {"3": 1}, "reason": "SandboxTimeout"}')
    _apply(entries, b"not json", b"{}")
    assert list(entries) == ["attempts:preprocess:q.jobs:0"]
    _apply(entries, json.dumps("attempts:preprocess:q.jobs:0").encode(), None)
    assert entries == {}


def test_a_forged_attempt_count_is_ignored_not_trusted():
    """`{"offsets": []}` made the execute stage's ledger raise and stop the worker at every
    start; a forged entry is now left out (the record's count starts again)."""
    key = json.dumps("attempts:execute:q.jobs:0").encode()
    for forged in (b'{"offsets": []}', b'{"offsets": {"3": "x"}}', b'{"offsets": {"x": 1}}',
                   b'{"offsets": {"3": -1}}', b'[1]'):
        entries: dict = {}
        _apply(entries, key, forged)
        assert entries == {}, forged


def test_control_records_a_worker_acts_on_are_well_formed():
    from streams.workflow.control_records import well_formed

    assert well_formed("noise:aer.noisy", {"noise_scale": 1.5})
    assert not well_formed("noise:aer.noisy", {"noise_scale": float("nan")})
    assert not well_formed("noise:aer.noisy", {"noise_scale": -1})
    assert not well_formed("noise:aer.noisy", {"noise_scale": True})
    assert well_formed("drift:aer.noisy", {"severity": "warning", "at_ms": 5})
    assert not well_formed("drift:aer.noisy", {"severity": "warning"})
    assert well_formed("spend:acme:0", {"usd": 2.5})
    assert not well_formed("spend:acme:0", {"usd": float("inf")})
    assert not well_formed(["noise:aer.noisy"], {"noise_scale": 1})
    assert not well_formed("noise:aer.noisy", [1])


# --- reading the counts while the cluster cannot answer -------------------------------------

def ledger_loading(monkeypatch, outcomes):
    """An AttemptLedger whose loads give `outcomes` in turn (an exception is raised)."""
    calls = []

    async def load_entries(runtime):
        outcome = outcomes[len(calls)]
        calls.append(outcome)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    monkeypatch.setattr(poison, "load_entries", load_entries)
    settings = SimpleNamespace(retry_backoff_s=0.001, retry_backoff_max_s=0.002)
    return poison.AttemptLedger(SimpleNamespace(settings=settings)), calls


def test_the_counts_are_read_again_while_the_cluster_cannot_answer(monkeypatch):
    key = ledger_key("preprocess", source(7).topic, 0)
    ledger, calls = ledger_loading(monkeypatch, [
        KafkaTimeoutError("Failed to get offsets by times in 40000 ms"),
        NodeNotReadyError("node 3"),
        {key: {"offsets": {"7": 1}, "reason": "", "at_ms": 1}},
    ])
    assert asyncio.run(ledger.tries("preprocess", source(7))) == (1, "")
    assert len(calls) == 3 and not ledger.stale


def test_a_failure_that_is_not_the_cluster_s_is_raised_and_loaded_again_next_time(
        monkeypatch):
    ledger, calls = ledger_loading(monkeypatch, [ValueError("bad control record"), {}])
    with pytest.raises(ValueError):
        asyncio.run(ledger.tries("preprocess", source(7)))
    assert ledger.stale
    assert asyncio.run(ledger.tries("preprocess", source(7))) == (0, "")
    assert len(calls) == 2


def test_a_stop_asked_for_takes_back_the_marks_of_the_call_it_cuts_short():
    """Each SIGTERM stop that ran into its deadline during a long simulation counted as a
    death: after two restarts a good job was dead-lettered as PoisonRecord (a red-team
    run). A record that had a try before keeps it."""
    key = ledger_key("execute", "q.stage.execute", 0)
    ledger = FakeLedger({key: {"offsets": {"6": 1}, "reason": "in flight"}})
    records = [source(5), source(6)]
    owner = runtime(ledger)
    flight = InFlight(owner, "execute", records)

    async def go():
        await flight.load()
        await flight.running([records[0].address])
        assert ledger.entries[key]["offsets"] == {"5": 1, "6": 1}
        await withdraw_in_flight_marks(owner)  # SIGTERM; the deadline then ends the call
        assert ledger.entries[key]["offsets"] == {"5": 0, "6": 1}
        assert ledger.writes[-1][2] is True
        restarted = InFlight(runtime(ledger), "execute", records)
        await restarted.load()
        assert restarted.tries == {records[0].address: 0, records[1].address: 1}
        await flight.finished([records[0].address])  # a call that ended within the stop
        assert ledger.entries[key]["offsets"] == {"6": 1}
        assert owner.in_flight_calls == set()

    asyncio.run(go())


def test_a_call_begun_after_a_stop_was_asked_for_leaves_no_mark():
    """The stage went on starting backend calls while Faust stopped; their marks outlived
    the deadline, and two SIGTERM stops dead-lettered good jobs as PoisonRecord (a red-team
    run on both brokers)."""
    key = ledger_key("execute", "q.stage.execute", 0)
    ledger = FakeLedger()
    records = [source(5), source(6)]
    owner = runtime(ledger)
    flight = InFlight(owner, "execute", records)

    async def go():
        await flight.load()
        await withdraw_in_flight_marks(owner)  # SIGTERM, with no call under way
        await flight.running([records[0].address])  # the next batch's call starts
        assert ledger.entries.get(key, {}).get("offsets", {}).get("5", 0) == 0
        restarted = InFlight(runtime(ledger), "execute", records)
        await restarted.load()
        assert not restarted.suspects()
        await flight.finished([records[0].address])
        assert owner.in_flight_calls == set()

    asyncio.run(go())


class SlowLedger(FakeLedger):
    """A ledger whose writes of marks take turns of the event loop, as a producer's send
    can, and whose other writes go at once."""

    async def write(self, stage, topic, partition, offsets, reason="", flush=True):
        for _ in range(3 if any(offsets.values()) else 0):
            await asyncio.sleep(0)
        await super().write(stage, topic, partition, offsets, reason, flush)


def test_a_stop_during_a_calls_marks_being_written_leaves_none_behind():
    """A batch over several partitions writes its marks key by key; a stop's withdrawal
    written in between was overwritten by the marks still going out (a red-team run: 49 of
    300 trials left a mark)."""
    records = [source(7, partition=p) for p in range(4)]
    for turns in range(12):  # the stop lands after this many turns of the marks' writes
        ledger = SlowLedger()
        owner = runtime(ledger)
        flight = InFlight(owner, "execute", records)

        async def go(flight=flight, owner=owner, turns=turns):
            await flight.load()
            marking = asyncio.create_task(flight.running([r.address for r in records]))
            for _ in range(turns):
                await asyncio.sleep(0)
            await withdraw_in_flight_marks(owner)
            await marking

        asyncio.run(go())
        left = {key: entry["offsets"] for key, entry in ledger.entries.items()
                if any(entry["offsets"].values())}
        assert left == {}, (turns, left)
