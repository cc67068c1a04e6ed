"""A variational loop's checkpoint grows by one evaluation per write, not by its history."""

from __future__ import annotations

import json

from streams.agents.variational import (
    CHECKPOINT_CHUNK,
    chunk_key,
    drop_checkpoint,
    load_checkpoint,
    rewrite_checkpoint,
    save_evaluation,
)


class RecordingTable(dict):
    """A table that counts the bytes each write would put in the changelog."""

    written = 0

    def __setitem__(self, key, value):
        self.written += len(json.dumps(value))
        super().__setitem__(key, value)


def evaluation(index: int) -> dict:
    return {"index": index, "parameters": [0.1 * index, -0.2], "value": -1.0 + 1e-3 * index,
            "std_error": 0.01, "shots": 4000, "cost_usd": 0.00375, "raw": [-0.9, 0.01]}


def test_a_long_loop_writes_bytes_linear_in_its_evaluations_and_resumes_whole():
    """2,000 evaluations of a 2-parameter loop wrote 373 MiB to the changelog when the whole
    history went into the entry after each (red-team run); each write is now a chunk."""
    table, items = RecordingTable(), []
    for index in range(2000):
        items.append(evaluation(index))
        save_evaluation(table, "acme.vqe", items)
    per_evaluation = len(json.dumps(evaluation(0)))
    assert table.written < 2000 * (CHECKPOINT_CHUNK * per_evaluation + 200)  # about 10 MB
    assert table.written < 2000 * 2000 * per_evaluation / 20  # the quadratic was ~370 MB
    entry = table["acme.vqe"]
    assert entry["evaluations"] == 2000 and entry["checkpoint"] == []
    assert load_checkpoint(table, "acme.vqe", entry) == items
    drop_checkpoint(table, "acme.vqe", 2000)
    assert set(table) == {"acme.vqe"}


def test_an_entry_of_the_older_form_resumes_with_its_own_history():
    older = [evaluation(i) for i in range(CHECKPOINT_CHUNK * 2 + 5)]
    table = {"wf": {"state": "executing", "checkpoint": older}}
    items = load_checkpoint(table, "wf", table["wf"])
    assert items == older
    rewrite_checkpoint(table, "wf", items)  # continued: in chunks from now on
    items.append(evaluation(len(items)))
    save_evaluation(table, "wf", items)
    assert load_checkpoint(table, "wf", table["wf"]) == items
    assert chunk_key("wf", 0) != "wf"


def test_a_loop_past_its_deadline_makes_no_fresh_evaluation_whatever_stopped_it():
    """A loop resumed after a kill, whose replayed history ended its optimizer, ran and charged
    its fresh evaluation 3 s past its deadline and reported `converged` (a red-team run)."""
    from streams.agents.variational import confirms_best, loop_deadline_ms

    assert confirms_best("converged", None, 10**13)
    assert confirms_best(None, 2_000, 2_000)
    assert not confirms_best(None, 2_000, 2_001)  # the optimizer's own stop, past it
    assert not confirms_best("deadline", None, 0)
    assert not confirms_best("cancelled", 10**13, 0)
    request = {"deadline_ms": 6_000, "submitted_at_ms": 1_000}
    assert loop_deadline_ms(request, {"accepted_ms": 1_200, "updated_ms": 9_000}) == 7_000
    assert loop_deadline_ms({**request, "submitted_at_ms": 0}, {"accepted_ms": 1_200}) == 7_200
    assert loop_deadline_ms({"deadline_ms": None}, {}) is None


def test_a_loop_is_handed_over_only_for_a_rebalance_begun_since_it_started():
    """Faust's `rebalancing` stays set until recovery ends, after the partitions are assigned
    again: loops started in that window handed themselves over once an evaluation (34 of 61
    hand-overs in a red-team run)."""
    from types import SimpleNamespace

    from streams.agents.variational import handing_over
    from streams.kafka.flow import rebalances_begun

    app = SimpleNamespace(rebalancing=True, rebalancing_count=3, should_stop=False)
    runtime = SimpleNamespace(app=app)
    assert rebalances_begun(runtime.app) == 3
    assert not handing_over(runtime, 3)  # assigned again, recovery not ended
    assert handing_over(runtime, 2)  # a rebalance began while the loop ran
    app.should_stop = True  # Faust may have ended the transaction: no hand-over's commit
    assert not handing_over(runtime, 2)
    app.rebalancing = app.should_stop = False
    assert not handing_over(runtime, 2)
