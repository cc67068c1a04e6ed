"""Jobs through the whole pipeline: correctness, idempotency, dead letters."""

import asyncio
import math
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer
from qiskit import qasm3
from qiskit.quantum_info import SparsePauliOp, Statevector

from streams.client import job_request, read_topic
from tests.support import ready_worker, session_settings, submit_and_wait, topic_records, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

ANSATZ3 = """OPENQASM 3.0;
include "stdgates.inc";
input float[64] a;
input float[64] b;
input float[64] c;
qubit[3] q;
ry(a) q[0]; ry(b) q[1]; rz(c) q[2]; h q[2];
cx q[0], q[1]; cx q[1], q[2];
rx(a + c) q[0]; ry(b / 2) q[2];
"""

GHZ3 = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[3];
creg c[3];
h q[0];
cx q[0],q[1];
cx q[1],q[2];
u3(0.4,0.1,0.2) q[2];
measure q -> c;
"""


# The statistical tests use fixed workflow ids: seeds derive from them, so the outcome is
# reproducible (each session has its own topics, so fixed ids never meet a duplicate).


def wf(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_expectation_values_match_exact_within_four_standard_errors(settings, worker):
    rng = np.random.default_rng(1234)
    parameter_sets = rng.uniform(-np.pi, np.pi, size=(4, 3)).round(6).tolist()
    observables = [
        [("ZZI", 1.0)],
        [("XIX", 0.7), ("IYZ", -0.4)],
        [("ZII", 0.5), ("IZI", 0.5), ("IIZ", 0.5)],
        [("YYX", 1.0)],
    ]
    job = job_request(
        workflow_id="exact-1234", circuit=ANSATZ3, shots=20000, backend="aer.ideal",
        parameter_sets=parameter_sets,
        observables=[{"terms": [{"pauli": p, "coeff": c} for p, c in terms]}
                     for terms in observables],
    )
    outcome = submit_and_wait(settings, [job])[job["workflow_id"]]
    assert outcome.result is not None, outcome.detail
    rows = outcome.result["expectations"]
    assert len(rows) == len(parameter_sets) * len(observables)

    circuit = qasm3.loads(ANSATZ3)
    worst = 0.0
    for row in rows:
        values = parameter_sets[row["parameter_set_index"]]
        bound = circuit.assign_parameters(dict(zip(circuit.parameters, values, strict=True)))
        exact = Statevector(bound).expectation_value(
            SparsePauliOp.from_list(observables[row["observable_index"]])
        ).real
        assert row["std_error"] > 0
        z = abs(row["value"] - exact) / row["std_error"]
        worst = max(worst, z)
        assert z < 4, (row, exact)
    assert worst > 0  # values are sampled, not copied from an exact computation
    print(f"worst |value - exact| / std_error over {len(rows)} values: {worst:.2f}")


def test_counts_match_exact_distribution(settings, worker):
    shots = 20000
    job = job_request(workflow_id="ghz-1234", circuit=GHZ3, shots=shots, backend="aer.ideal")
    outcome = submit_and_wait(settings, [job])[job["workflow_id"]]
    assert outcome.result is not None, outcome.detail
    counts = outcome.result["circuits"][0]["counts"]
    assert sum(counts.values()) == shots

    from qiskit import qasm2
    circuit = qasm2.loads(GHZ3).remove_final_measurements(inplace=False)
    exact = Statevector(circuit).probabilities_dict()
    outcomes = set(exact) | set(counts)
    tvd = 0.5 * sum(abs(counts.get(k, 0) / shots - exact.get(k, 0.0)) for k in outcomes)
    # The expected TVD of an empirical distribution is about sum_k sqrt(p_k/(2*pi*N)).
    expected = sum(math.sqrt(p * (1 - p) / (2 * math.pi * shots)) for p in exact.values())
    assert tvd < 3 * expected + 1e-3, (tvd, expected)


def test_a_results_timings_count_its_preparation_as_preprocessing(settings, worker):
    """On the batch path a result said `preprocess_s` 0.00008 for a 3.3 s preparation, and
    counted the preparation and the backend call as queued (`queued_s` 4.98 of an
    `end_to_end_s` of 4.98; a red-team run)."""
    from tests.unit.workers.circuits.test_sandbox import many_gate_instances

    job = job_request(workflow_id=f"timed-{uuid.uuid4().hex[:8]}", shots=100,
                      circuit=many_gate_instances(7, instances=1500), backend="aer.ideal")
    outcome = submit_and_wait(settings, [job], timeout_s=120)[job["workflow_id"]]
    assert outcome.state == "done", outcome.detail
    timings = outcome.result["timings"]
    assert timings["preprocess_s"] > 0.1, timings
    parts = sum(timings[k] for k in ("queued_s", "preprocess_s", "execute_s", "mitigate_s"))
    assert parts <= timings["end_to_end_s"] + 0.05, timings
    assert timings["queued_s"] < timings["end_to_end_s"] - timings["preprocess_s"], timings


@pytest.fixture(scope="module")
def idle_settings(broker_address):
    return session_settings(*broker_address, tag="fidle")


@pytest.fixture(scope="module")
def idle_worker(idle_settings, tmp_path_factory):
    yield from ready_worker(idle_settings, tmp_path_factory.mktemp("fused-idle-worker"),
                            {"QLANE_FUSED_PATH": "idle"})


def test_lone_jobs_take_the_fused_path_and_a_burst_the_stages_with_equal_results(
        idle_settings, idle_worker):
    """fused_path=idle: a job with nothing behind it runs to its result on its
    jobs record; a burst goes through stage.execute and stage.mitigate. Same seed, same
    counts and estimates on both paths; the same statuses before the result."""
    ghz = {"circuit": GHZ3, "shots": 3000, "backend": "aer.noisy", "seed": 1234,
           "observables": [{"terms": [{"pauli": "ZZZ", "coeff": 1.0}]}]}
    settings = idle_settings
    lone = job_request(workflow_id=wf("lone"), **ghz)
    lone_outcome = submit_and_wait(settings, [lone])[lone["workflow_id"]]
    assert lone_outcome.state == "done", lone_outcome.detail
    burst = [job_request(workflow_id=wf(f"burst{i}"), **ghz) for i in range(12)]
    outcomes = submit_and_wait(settings, burst, timeout_s=120)
    assert {o.state for o in outcomes.values()} == {"done"}
    staged = {record.key.decode() for record in topic_records(settings, "stage.execute", 10)}
    assert lone["workflow_id"] not in staged
    assert staged & {job["workflow_id"] for job in burst}, "no job of the burst was staged"
    for outcome in outcomes.values():
        assert outcome.result["circuits"][0]["counts"] == \
            lone_outcome.result["circuits"][0]["counts"]
        assert outcome.result["expectations"] == lone_outcome.result["expectations"]
        # "done" follows the result, so the client may stop reading before it.
        assert outcome.history[:3] == ["accepted", "prepared", "executing"], outcome.history
    assert lone_outcome.history[:3] == ["accepted", "prepared", "executing"]


def results_for(settings, workflow_id: str) -> list[bytes]:
    async def go():
        found = []
        async for record in read_topic(settings, f"{settings.topic_prefix}.results", 10):
            if record.key == workflow_id.encode():
                found.append(record.value)
        return found
    return asyncio.run(go())


def dead_letters_for(settings, key: bytes) -> list:
    async def go():
        return [record async for record in
                read_topic(settings, f"{settings.topic_prefix}.deadletter", 10)
                if record.key == key]
    return asyncio.run(go())


def test_a_worker_warms_up_each_step_in_the_background(worker):
    """The warm-up thread of a real worker: every step ready, then the closing line."""
    def finished() -> str | None:
        text = worker.qlane_log.read_text()
        return text if "warm-ups done" in text else None

    log = wait_for(finished, timeout_s=180)
    assert log, "no 'warm-ups done' line within 180 s"
    for step in ("mitiq import", "backends", "drift monitor", "variational optimizer"):
        assert f"{step} ready in" in log, step
    assert "warm-up of the" not in log  # no step failed


def test_duplicate_is_acknowledged_and_not_rerun(settings, worker):
    job = job_request(workflow_id=wf("dup"), circuit=(EXAMPLES / "bell.qasm").read_text(),
                      shots=300)
    first = submit_and_wait(settings, [job])[job["workflow_id"]]
    assert first.state == "done"
    again = {**job, "submitted_at_ms": job["submitted_at_ms"] + 5000}
    second = submit_and_wait(settings, [again], timeout_s=60)[job["workflow_id"]]
    assert "duplicate" in second.history
    assert second.result == first.result  # the earlier answer, found again
    time.sleep(3)
    assert len(results_for(settings, job["workflow_id"])) == 1


def test_same_id_with_different_payload_is_dead_lettered_as_conflict(settings, worker):
    job = job_request(workflow_id=wf("conflict"), circuit=(EXAMPLES / "bell.qasm").read_text(),
                      shots=300)
    assert submit_and_wait(settings, [job])[job["workflow_id"]].state == "done"
    changed = {**job, "shots": 301}
    outcome = submit_and_wait(settings, [changed], timeout_s=60)[job["workflow_id"]]
    assert outcome.state == "rejected"
    assert "IdempotencyConflict" in outcome.detail
    letters = dead_letters_for(settings, job["workflow_id"].encode())
    assert len(letters) == 1
    headers = dict(letters[0].headers)
    assert headers["qlane.dlq.error.class"] == b"IdempotencyConflict"
    assert headers["qlane.dlq.stage"] == b"preprocess"
    time.sleep(2)
    assert len(results_for(settings, job["workflow_id"])) == 1


def test_garbage_and_invalid_qasm_are_dead_lettered_and_the_stream_keeps_flowing(
    settings, worker
):
    garbage_key = wf("garbage").encode()
    garbage = b"\x00\xffnot avro at all\xc3"
    invalid = job_request(workflow_id=wf("badqasm"), circuit="OPENQASM 2.0;\nqreg q[2];\nfoo q;")
    valid = job_request(workflow_id=wf("after"), circuit=(EXAMPLES / "bell.qasm").read_text(),
                        shots=200)

    # A null header stays null, duplicates stay, in order (a null became empty: a red-team
    # run from a Java client).
    sent_headers = [("origin", b"test"), ("x-null", None), ("x-dup", b"1"), ("x-dup", b"2")]

    async def send_garbage():
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker)
        await producer.start()
        await producer.send_and_wait(f"{settings.topic_prefix}.jobs", value=garbage,
                                     key=garbage_key, headers=sent_headers)
        await producer.stop()

    asyncio.run(send_garbage())
    outcomes = submit_and_wait(settings, [invalid, valid])
    assert outcomes[valid["workflow_id"]].state == "done"
    assert outcomes[invalid["workflow_id"]].state == "failed"
    assert "InvalidCircuit" in outcomes[invalid["workflow_id"]].detail

    # The garbage may sit on another partition than the jobs above: wait for its letter.
    [letter] = wait_for(lambda: dead_letters_for(settings, garbage_key))
    headers = dict(letter.headers)
    assert letter.value == garbage  # original bytes untouched
    assert [h for h in letter.headers if not h[0].startswith("qlane.")] == sent_headers
    assert headers["qlane.dlq.error.class"] == b"CorruptRecord"
    assert headers["qlane.dlq.source.topic"] == f"{settings.topic_prefix}.jobs".encode()
    [letter] = dead_letters_for(settings, invalid["workflow_id"].encode())
    assert dict(letter.headers)["qlane.dlq.error.class"] == b"InvalidCircuit"
