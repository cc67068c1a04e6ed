"""What counts toward holding a source: every dead letter on a job topic; on a stage topic,
which carries every tenant's jobs, only what points at a broken deploy."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from streams.agents.common import counts_against_source
from streams.settings import Settings
from workers.errors import (
    BudgetExceeded,
    CorruptRecord,
    InvalidCircuit,
    JobTooLarge,
    SimulationTimeout,
    UnknownSchema,
    UnreadableRecordBatch,
    WorkerResourcesExhausted,
)

RUNTIME = SimpleNamespace(settings=Settings(topic_prefix="qlane"))


def source(topic: str):
    return SimpleNamespace(topic=topic, partition=0)


@pytest.mark.parametrize("topic", ["qlane.jobs", "qlane.jobs.acme-high", "qlane.jobs-low"])
@pytest.mark.parametrize("error", [InvalidCircuit("x"), BudgetExceeded("x"), CorruptRecord("x"),
                                   AttributeError("x")])
def test_on_a_job_topic_every_dead_letter_counts(topic, error):
    assert counts_against_source(RUNTIME, source(topic), error)
    assert not counts_against_source(RUNTIME, source(topic), None)


@pytest.mark.parametrize("topic", ["qlane.stage.variational", "qlane.stage.execute-high",
                                   "qlane.stage.mitigate"])
def test_on_a_stage_topic_only_a_broken_deploy_counts(topic):
    for own in (BudgetExceeded("x"), JobTooLarge("x"), SimulationTimeout("x"),
                InvalidCircuit("x")):
        assert not counts_against_source(RUNTIME, source(topic), own), own
    for broken in (CorruptRecord("x"), UnknownSchema("x"), UnreadableRecordBatch("x"),
                   AttributeError("x"), KeyError("x"), WorkerResourcesExhausted("x")):
        assert counts_against_source(RUNTIME, source(topic), broken), broken
