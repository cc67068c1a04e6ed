"""A flood of bad input: every record is dead-lettered with its typed reason, the worker
stays up, and a valid job sent afterwards completes."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
import uuid
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from schemas.codec import codec
from streams.client import job_request
from streams.kafka.topics import ensure_topics
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
# A finite parameter value that gives a gate an angle that is not a finite number.
NON_FINITE_ANGLE = ('OPENQASM 3.0;\ninclude "stdgates.inc";\ninput float[64] a;\n'
                    "qubit[2] q;\nh q[1];\nrz({angle}) q[0];\n")
NON_FINITE = [("1/a", 0.0), ("a*1e300", 1e10), ("a*a", 1e200), ("1/(a-1.5)", 1.5)]


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


@st.composite
def nested_gate_definitions(draw) -> dict:
    """Gate definitions each calling the previous one `fan_out` times: fan_out^depth gates."""
    fan_out = draw(st.integers(min_value=2, max_value=6))
    depth = draw(st.integers(min_value=12, max_value=60))
    while fan_out**depth <= 200_000:
        depth += 1
    qasm3 = draw(st.booleans())
    lines = (['OPENQASM 3.0;', 'include "stdgates.inc";', "qubit[2] q;"] if qasm3 else
             ['OPENQASM 2.0;', 'include "qelib1.inc";', "qreg q[2];"])
    lines.append("gate g0 a, b { cx a, b; }")
    for level in range(1, depth + 1):
        calls = " ".join(draw(st.sampled_from([f"g{level - 1} a, b;", f"g{level - 1} b, a;"]))
                         for _ in range(fan_out))
        lines.append(f"gate g{level} a, b {{ {calls} }}")
    lines.append(f"g{depth} q[0], q[1];")
    return {"circuit": "\n".join(lines) + "\n"}


@st.composite
def nested_loops(draw) -> dict:
    """OpenQASM 3 for loops nested 1-6 deep whose iterations multiply past the limit."""
    depth = draw(st.integers(min_value=1, max_value=6))
    sizes = [draw(st.integers(min_value=2, max_value=10**6)) for _ in range(depth)]
    product = 1
    for size in sizes:
        product *= size
    if product <= 100_000:
        sizes[-1] = 100_001
    body = draw(st.sampled_from(["h q;", "x q;", "rz(0.1) q;"]))
    for index, size in enumerate(reversed(sizes)):
        loop_set = draw(st.sampled_from([f"[0:{size - 1}]", f"[1:{size}]", f"[0:1:{size - 1}]"]))
        body = f"for int i{index} in {loop_set} {{ {body} }}"
    return {"circuit": f'OPENQASM 3.0;\ninclude "stdgates.inc";\nqubit q;\n{body}\n'}


INCLUDE_PATHS = st.one_of(
    st.sampled_from(["/etc/passwd", "/etc/shadow", "/proc/self/environ", "../../etc/hosts",
                     "~/.ssh/id_rsa", "C:\\Windows\\win.ini", "qelib1.inc/../../etc/passwd",
                     "stdgates.inc.bak", "QELIB1.INC"]),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz./_-~", min_size=1, max_size=40),
).filter(lambda path: path not in ("qelib1.inc", "stdgates.inc"))


@st.composite
def foreign_includes(draw) -> dict:
    path = draw(INCLUDE_PATHS)
    if draw(st.booleans()):
        return {"circuit": f'OPENQASM 2.0;\ninclude "qelib1.inc";\ninclude "{path}";\n'
                           "qreg q[1];\nh q[0];\n"}
    return {"circuit": f'OPENQASM 3.0;\ninclude "{path}";\nqubit q;\nh q;\n'}


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
    nonsense("non_finite_angle", "ParameterMismatch",
             st.sampled_from(NON_FINITE).map(lambda case: {
                 "circuit": NON_FINITE_ANGLE.format(angle=case[0]),
                 "parameter_sets": [[0.5], [case[1]]]})),
    nonsense("nested_gate_definitions", "CircuitTooLarge", nested_gate_definitions()),
    nonsense("nested_loops", "CircuitTooLarge", nested_loops()),
    nonsense("foreign_include", "ForbiddenInclude", foreign_includes()),
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


def key_on_partition(prefix: str, partition: int, partitions: int) -> str:
    """A workflow id that the default partitioner puts on `partition`."""
    partitioner = DefaultPartitioner()
    every = list(range(partitions))
    return next(key for i in range(1000) if partitioner(
        (key := f"{prefix}-{uuid.uuid4().hex[:6]}-{i}").encode(), every, every) == partition)


def produce_to(settings, partition: int, records: list[tuple[str, bytes]]) -> None:
    async def go():
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker, linger_ms=20)
        await producer.start()
        for key, value in records:
            await producer.send(f"{settings.topic_prefix}.jobs", value=value, key=key.encode(),
                                partition=partition)
        await producer.flush()
        await producer.stop()

    asyncio.run(go())


def timed_job(settings, workflow_id: str, results: dict) -> None:
    started = time.monotonic()
    job = job_request(workflow_id=workflow_id, circuit=BELL, shots=64)
    outcome = submit_and_wait(settings, [job], timeout_s=300)[workflow_id]
    results[workflow_id] = (outcome.state, time.monotonic() - started)


def test_a_garbage_burst_holds_only_its_source_and_for_a_bounded_time(
        broker_address, tmp_path, report):
    """300 garbage records on one partition, then a valid job behind them; meanwhile a valid
    job on another partition. The guard holds the garbage's partition (50 in a row trip it),
    never the other one, and for at most its hold budget in total."""
    settings = session_settings(*broker_address, tag="guard")
    asyncio.run(ensure_topics(settings))
    log = tmp_path / "worker.log"
    pause_s, budget_s = scale(5, 30), scale(10, 60)
    guard = {"QLANE_DLQ_GUARD_PAUSE_S": str(pause_s),
             "QLANE_DLQ_GUARD_HOLD_BUDGET_S": str(budget_s)}
    worker = start_worker(settings, log, env=guard)
    try:
        wait_until_ready(settings, log)
        behind = key_on_partition("behind-garbage", 0, settings.partitions)
        other = key_on_partition("other-source", 1, settings.partitions)
        produce_to(settings, 0, [(f"garbage-{i}", b"\x00garbage " + bytes([i % 256]))
                                 for i in range(300)])
        results: dict = {}
        threads = [threading.Thread(target=timed_job, args=(settings, key, results))
                   for key in (behind, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results[behind][0] == "done" and results[other][0] == "done", results
        lines = log.read_text().splitlines()
        holds = [line for line in lines if "STAGE PREPROCESS HOLDS" in line]
        assert holds, log.read_text()[-3000:]
        assert all(f"{settings.topic_prefix}.jobs:0 " in line for line in holds), holds
        held = sum(float(line.split(" for ")[1].split("s:")[0]) for line in holds)
        assert held <= budget_s
        # Never held (the garbage is not its source): it only queues behind the garbage records
        # the stage had already fetched, handled at the stage's pace.
        assert results[other][1] < 90, results
        assert results[behind][1] < budget_s + 90, results
        letters = wait_for(lambda: len([r for r in topic_records(settings, "deadletter")
                                        if r.key.decode().startswith("garbage-")]) >= 300,
                           timeout_s=60)
        assert letters
        assert worker.poll() is None
        report.update(garbage=300, behind_garbage_s=round(results[behind][1], 1),
                      other_partition_s=round(results[other][1], 1), holds=len(holds),
                      held_s=held, hold_budget_s=budget_s)
    finally:
        stop_worker(worker)
