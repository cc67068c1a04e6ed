"""A flood of bad input: every record is dead-lettered with its typed reason, the worker
stays up, and a valid job sent afterwards completes."""

from __future__ import annotations

import asyncio
import collections
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from aiokafka import AIOKafkaProducer
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from schemas.codec import codec
from streams.client import job_request
from streams.topics import ensure_topics
from tests.reliability.conftest import scale
from tests.support import (
    BELL,
    session_settings,
    start_worker,
    stop_worker,
    submit_and_wait,
    topic_records,
    wait_for,
    wait_until_ready,
)

UNBOUND = ('OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] {name};\n'
           "qubit[{qubits}] q;\nrx({name}) q[0];\n")


@dataclass(frozen=True)
class BadInput:
    kind: str
    fields: dict | None = None  # schema-valid nonsense: JobRequest fields to change
    raw: bytes | None = None  # bytes that are not a valid frame
    expected: frozenset = frozenset()


def valid_frame(workflow_id: str = "fuzz") -> bytes:
    return codec("JobRequest").encode(job_request(workflow_id=workflow_id, circuit=BELL, shots=8))


def nonsense(kind: str, expected: str, fields) -> st.SearchStrategy:
    return fields.map(lambda f: BadInput(kind, fields=f, expected=frozenset({expected})))


BAD_INPUTS = st.one_of(
    st.binary(max_size=400).filter(lambda b: not b.startswith(b"\xc3\x01")).map(
        lambda b: BadInput("random_bytes", raw=b, expected=frozenset({"CorruptRecord"}))),
    st.integers(min_value=0, max_value=len(valid_frame()) - 1).map(
        lambda n: BadInput("truncated_frame", raw=valid_frame()[:n],
                           expected=frozenset({"CorruptRecord"}))),
    st.binary(min_size=8, max_size=8).filter(lambda f: f != valid_frame()[2:10]).map(
        lambda f: BadInput("wrong_fingerprint", raw=b"\xc3\x01" + f + valid_frame()[10:],
                           expected=frozenset({"UnknownSchema"}))),
    nonsense("negative_or_zero_shots", "InvalidShots",
             st.integers(min_value=-(2**31), max_value=0).map(lambda s: {"shots": s})),
    nonsense("absurd_shots", "InvalidShots",
             st.integers(min_value=10**6 + 1, max_value=2**31 - 1).map(lambda s: {"shots": s})),
    nonsense("too_many_qubits", "CircuitTooLarge",
             st.integers(min_value=25, max_value=600).map(lambda n: {
                 "circuit": f'OPENQASM 2.0;\ninclude "qelib1.inc";\nqreg q[{n}];\nh q[0];\n'})),
    nonsense("megabytes_of_qasm", "CircuitTooLarge",
             st.integers(min_value=256_001, max_value=900_000).map(
                 lambda size: {"circuit": BELL + "//" + "x" * size})),
    nonsense("invalid_qasm", "InvalidCircuit",
             st.text(max_size=200).map(lambda text: {"circuit": text})),
    nonsense("unknown_backend", "UnknownBackend",
             st.text(min_size=1, max_size=30).filter(lambda n: n not in ("aer.ideal", "aer.noisy"))
             .map(lambda name: {"backend": name})),
    nonsense("unbound_parameters", "ParameterMismatch",
             st.tuples(st.sampled_from(["theta", "alpha", "beta", "phi", "t0"]),
                       st.integers(min_value=1, max_value=5))
             .map(lambda p: {"circuit": UNBOUND.format(name=p[0], qubits=p[1])})),
    nonsense("bad_observable", "InvalidObservable",
             st.text(alphabet="IXYZQ", min_size=1, max_size=6).filter(lambda p: len(p) != 2 or
                                                                     "Q" in p)
             .map(lambda p: {"observables": [{"terms": [{"pauli": p, "coeff": 1.0}]}]})),
)


def generate_bad_inputs(count: int) -> list[BadInput]:
    collected: list[BadInput] = []

    @hypothesis_settings(max_examples=count, database=None, deadline=None, derandomize=True,
                         suppress_health_check=list(HealthCheck))
    @given(BAD_INPUTS)
    def collect(bad: BadInput) -> None:
        collected.append(bad)

    collect()
    return collected


def to_record(bad: BadInput, key: str) -> bytes:
    if bad.raw is not None:
        return bad.raw
    return codec("JobRequest").encode(
        job_request(**{"workflow_id": key, "circuit": BELL, "shots": 8, **bad.fields}))


def produce(settings, records: list[tuple[str, bytes]]) -> None:
    async def go():
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker, linger_ms=20,
                                    max_request_size=2_000_000)
        await producer.start()
        for key, value in records:
            await producer.send(f"{settings.topic_prefix}.jobs", value=value, key=key.encode())
        await producer.flush()
        await producer.stop()

    asyncio.run(go())


def test_every_bad_input_is_dead_lettered_with_its_typed_reason(broker_address, tmp_path,
                                                                 report):
    settings = session_settings(*broker_address, tag="fuzz")
    asyncio.run(ensure_topics(settings))
    log = tmp_path / "worker.log"
    guard_off = {"QLANE_DLQ_GUARD_CONSECUTIVE": "0", "QLANE_DLQ_GUARD_RATIO": "0"}
    worker = start_worker(settings, log, env=guard_off)
    try:
        wait_until_ready(settings, log)
        bad_inputs = generate_bad_inputs(scale(1000, 10_000))
        keys = [f"fuzz-{i:06d}" for i in range(len(bad_inputs))]
        started = time.monotonic()
        pairs = zip(keys, bad_inputs, strict=True)
        produce(settings, [(key, to_record(bad, key)) for key, bad in pairs])

        letters: dict[str, list[str]] = {}
        deadline = time.monotonic() + scale(180, 900)
        while time.monotonic() < deadline:
            letters = collections.defaultdict(list)
            for record in topic_records(settings, "deadletter", timeout_s=60):
                headers = dict(record.headers)
                letters[record.key.decode()].append(headers["qlane.dlq.error.class"].decode())
            if len(letters) >= len(keys) or worker.poll() is not None:
                break
            time.sleep(2)
        elapsed = time.monotonic() - started
        assert worker.poll() is None, "the worker died of its input"

        missing = [key for key in keys if key not in letters]
        assert not missing, f"{len(missing)} bad inputs not dead-lettered: {missing[:5]}"
        wrong = [(bad.kind, letters[key]) for key, bad in zip(keys, bad_inputs, strict=True)
                 if letters[key][0] not in bad.expected]
        assert not wrong, f"{len(wrong)} with the wrong reason, e.g. {wrong[:5]}"
        assert all(len(reasons) == 1 for reasons in letters.values())

        after = job_request(workflow_id=f"after-fuzz-{uuid.uuid4().hex[:6]}", circuit=BELL,
                            shots=64)
        assert submit_and_wait(settings, [after])[after["workflow_id"]].state == "done"
        kinds = collections.Counter(bad.kind for bad in bad_inputs)
        reasons = collections.Counter(letters[key][0] for key in keys)
        report.update(bad_inputs=len(keys), dead_lettered=len(letters),
                      seconds=round(elapsed, 1), by_kind=dict(kinds), by_reason=dict(reasons))
    finally:
        stop_worker(worker)


def test_dead_letter_guard_pauses_the_stage_then_resumes(broker_address, tmp_path):
    settings = session_settings(*broker_address, tag="guard")
    asyncio.run(ensure_topics(settings))
    log = tmp_path / "worker.log"
    guard = {"QLANE_DLQ_GUARD_CONSECUTIVE": "20", "QLANE_DLQ_GUARD_RATIO": "0",
             "QLANE_DLQ_GUARD_PAUSE_S": "4"}
    worker = start_worker(settings, log, env=guard)
    try:
        wait_until_ready(settings, log)
        produce(settings, [(f"broken-{i}", b"\x00broken deploy") for i in range(25)])
        # The jobs topic has several partitions, so a valid job sent now could overtake
        # broken records of another partition and end the run early: send it once paused.
        assert wait_for(lambda: "STAGE PREPROCESS PAUSED" in log.read_text(), timeout_s=60), \
            log.read_text()[-3000:]
        valid = job_request(workflow_id=f"after-guard-{uuid.uuid4().hex[:6]}", circuit=BELL,
                            shots=64)
        outcome = submit_and_wait(settings, [valid], timeout_s=90)[valid["workflow_id"]]
        assert outcome.state == "done"
        lines = log.read_text().splitlines()
        paused = line_index(lines, "STAGE PREPROCESS PAUSED")
        assert "20 consecutive dead letters" in lines[paused]
        resumed = line_index(lines, "stage preprocess resumes on probation")
        done = line_index(lines, f"{valid['workflow_id']} done")
        assert paused < resumed < done
        assert logged_at(lines[resumed]) - logged_at(lines[paused]) >= 3.9  # pause_s is 4
        held = [line for line in lines[paused:resumed] if "dead-lettered" in line]
        assert not held, f"the paused stage went on: {held}"
        assert worker.poll() is None
    finally:
        stop_worker(worker)


def line_index(lines: list[str], text: str) -> int:
    return next(i for i, line in enumerate(lines) if text in line)


def logged_at(line: str) -> float:
    """Seconds since the epoch of a text-format log line: '[2026-11-21 18:57:43,219] ...'."""
    stamp = datetime.strptime(line[1:line.index("]")], "%Y-%m-%d %H:%M:%S,%f")
    return stamp.timestamp()
