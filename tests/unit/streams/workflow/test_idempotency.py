from streams.workflow.idempotency import Decision, HandledRecords, admit, request_fingerprint

REQUEST = {"workflow_id": "wf-1", "circuit": "OPENQASM 2.0;", "shots": 100, "submitted_at_ms": 5}


def test_fingerprint_ignores_submission_time_but_not_payload():
    later = {**REQUEST, "submitted_at_ms": 999}
    assert request_fingerprint(later) == request_fingerprint(REQUEST)
    assert request_fingerprint({**REQUEST, "shots": 101}) != request_fingerprint(REQUEST)


def entry(state, source="qlane.jobs:0:7", fingerprint=None):
    return {"fingerprint": fingerprint or request_fingerprint(REQUEST), "state": state,
            "source": source}


def test_new_workflow_is_accepted():
    assert admit(None, request_fingerprint(REQUEST), "qlane.jobs:0:7").decision is Decision.ACCEPT


def test_same_payload_from_another_record_is_a_duplicate():
    for state in ("accepted", "prepared", "executing", "done"):
        admission = admit(entry(state), request_fingerprint(REQUEST), "qlane.jobs:0:8")
        assert admission.decision is Decision.DUPLICATE
        assert not admission.runs


def test_redelivered_record_of_unfinished_workflow_runs_again():
    admission = admit(entry("prepared"), request_fingerprint(REQUEST), "qlane.jobs:0:7")
    assert admission.decision is Decision.REDELIVERY and admission.runs


def test_redelivered_record_of_executed_workflow_is_a_duplicate():
    for state in ("executing", "executed", "done"):
        admission = admit(entry(state), request_fingerprint(REQUEST), "qlane.jobs:0:7")
        assert admission.decision is Decision.DUPLICATE


def test_failed_workflow_is_redriven_with_its_own_id():
    admission = admit(entry("failed"), request_fingerprint(REQUEST), "qlane.deadletter:1:3")
    assert admission.decision is Decision.REDRIVE and admission.runs


def test_different_payload_is_a_conflict_in_every_state():
    other = request_fingerprint({**REQUEST, "shots": 7})
    for state in ("accepted", "done", "failed"):
        assert admit(entry(state), other, "qlane.jobs:0:9").decision is Decision.CONFLICT


def test_a_worker_handles_each_record_address_once():
    handled = HandledRecords(maxsize=2)
    assert handled.first_time("jobs:0:7")
    assert not handled.first_time("jobs:0:7")  # re-fetched after the post-recovery seek
    assert handled.first_time("jobs:1:7")  # another partition, same offset
    assert handled.first_time("jobs:0:8")
    assert handled.first_time("jobs:0:7")  # forgotten: the memory is bounded


def test_another_record_at_a_remembered_address_is_handled():
    """A jobs topic deleted and created again numbers its records from 0 once more: by
    address alone, 31 of 40 new jobs were skipped as seen and lost (red-team run)."""
    from streams.workflow.idempotency import record_identity

    handled = HandledRecords(maxsize=16)
    first = record_identity(1_000, b"wf-1", b"job one")
    assert handled.first_time("jobs:0:7", first)
    assert not handled.first_time("jobs:0:7", first)  # the same record fetched again
    assert handled.first_time("jobs:0:7", record_identity(2_000, b"wf-9", b"job nine"))
    assert record_identity(1_000, b"wf-1", b"job one") != record_identity(1_000, b"wf-1job",
                                                                          b" one")


def test_handled_records_memory_can_be_disabled():
    handled = HandledRecords(maxsize=0)
    assert handled.first_time("jobs:0:7") and handled.first_time("jobs:0:7")
