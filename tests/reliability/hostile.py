"""Hostile programs and the tools the hostile-producer tests share (issue 11)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer

from schemas.codec import codec
from streams.client import job_request
from streams.kafka.security import kafka_options
from tests.support import topic_records


def doubling(levels: int, qasm3: bool = False) -> str:
    """Gate definitions that each call the previous one twice: 2^(levels+1) gates, ~1.2 KB."""
    header = (['OPENQASM 3.0;', 'include "stdgates.inc";', "qubit[2] q;"] if qasm3 else
              ['OPENQASM 2.0;', 'include "qelib1.inc";', "qreg q[2];"])
    lines = [*header, "gate g0 a, b { cx a, b; cx b, a; }"]
    lines += [f"gate g{i} a, b {{ g{i - 1} a, b; g{i - 1} b, a; }}" for i in range(1, levels + 1)]
    lines.append(f"g{levels} q[0], q[1];")
    return "\n".join(lines) + "\n"


Q3 = 'OPENQASM 3.0;\ninclude "stdgates.inc";\n'
Q2 = 'OPENQASM 2.0;\ninclude "qelib1.inc";\n'


@dataclass(frozen=True)
class Hostile:
    family: str
    program: str
    reasons: frozenset  # acceptable dead-letter reasons (error classes)
    request: tuple = ()  # other JobRequest fields, as (name, value) pairs


def noisy_layers(qubits: int, layers: int) -> str:
    """A mid-circuit measurement, then layers of h and a ring of cx: on a noisy backend Aer
    simulates it shot by shot."""
    body = []
    for layer in range(layers):
        body += [f"ry({0.1 + 0.01 * layer}) q[{i}];" for i in range(qubits)]
        body += [f"cx q[{i}], q[{(i + 1) % qubits}];" for i in range(qubits)]
    return (Q3 + f"qubit[{qubits}] q;\nbit[{qubits}] c;\nc[0] = measure q[0];\n"
            + "\n".join(body) + "\nc = measure q;\n")


def corpus() -> list[Hostile]:
    many = ", ".join(f"q[{i}]" for i in range(20))
    return [
        Hostile("exponential gate definitions (OpenQASM 2, 2^41 gates)", doubling(40),
                frozenset({"CircuitTooLarge"})),
        Hostile("exponential gate definitions (OpenQASM 3)", doubling(60, qasm3=True),
                frozenset({"CircuitTooLarge"})),
        Hostile("deep expression nesting", Q3 + "qubit q;\nrx(" + "(" * 20_000 + "1" +
                ")" * 20_000 + ") q;\n", frozenset({"ResourceLimitExceeded"})),
        Hostile("deep block nesting", Q3 + "qubit q;\nbit c;\n" +
                "if (c == 0) { " * 3000 + "x q;" + " }" * 3000 + "\n",
                frozenset({"ResourceLimitExceeded"})),
        Hostile("unbalanced brackets", "OPENQASM 2.0;\n" + "{[(" * 60_000,
                frozenset({"ResourceLimitExceeded"})),
        Hostile("OpenQASM 3 loop of 10^12 iterations", Q3 + "qubit q;\n"
                "for int i in [0:1000000000000] { h q; }\n", frozenset({"CircuitTooLarge"})),
        Hostile("OpenQASM 3 nested loops", Q3 + "qubit q;\n" +
                "for int i in [0:999] { " * 6 + "x q;" + " }" * 6 + "\n",
                frozenset({"CircuitTooLarge"})),
        Hostile("OpenQASM 3 while loop", Q3 + "qubit q;\nbit c;\n"
                "while (c == 0) { h q; c = measure q; }\n", frozenset({"CircuitTooLarge"})),
        Hostile("OpenQASM 3 recursive subroutine", "OPENQASM 3.0;\nqubit q;\n"
                "def f(qubit a) { f(a); f(a); }\nf(q);\n", frozenset({"CircuitTooLarge"})),
        Hostile("OpenQASM 3 subroutine fan-out", Q3 + "qubit[20] q;\n"
                "def f1(qubit a) { x a; x a; x a; x a; x a; x a; x a; x a; }\n" +
                "".join(f"def f{i}(qubit a) {{ " + f"f{i - 1}(a); " * 8 + "}\n"
                        for i in range(2, 12)) + f"f11(q[0]);\nh {many};\n",
                frozenset({"CircuitTooLarge"})),
        Hostile("pow modifier", Q3 + "qubit q;\npow(2**40) @ x q;\n",
                frozenset({"CircuitTooLarge"})),
        Hostile("huge qubit register (OpenQASM 3)", Q3 + "qubit[2**40] q;\nh q;\n",
                frozenset({"CircuitTooLarge"})),
        Hostile("huge qubit register (OpenQASM 2)", Q2 + "qreg q[2000000000];\nh q;\n",
                frozenset({"CircuitTooLarge"})),
        Hostile("huge bit register", Q3 + "const uint n = 1 << 40;\nqubit q;\nbit[n] c;\n",
                frozenset({"CircuitTooLarge"})),
        Hostile("broadcast over a register", Q2 + "qreg q[24];\n" + "h q;\n" * 20_000,
                frozenset({"CircuitTooLarge"})),
        Hostile("standard gates that expand (48,000 c4x over registers)",
                Q2 + "".join(f"qreg {r}[4];\n" for r in "abcde") + "c4x a,b,c,d,e;\n" * 12_000,
                frozenset({"CircuitTooLarge"})),
        Hostile("include /etc/passwd", 'OPENQASM 2.0;\ninclude "/etc/passwd";\nqreg q[1];\n',
                frozenset({"ForbiddenInclude"})),
        Hostile("include a relative path", Q3 + 'include "../../../../etc/hostname";\n'
                "qubit q;\n", frozenset({"ForbiddenInclude"})),
        Hostile("include /proc", 'OPENQASM 3.0;\ninclude "/proc/self/environ";\nqubit q;\n',
                frozenset({"ForbiddenInclude"})),
        Hostile("oversized source", Q2 + "qreg q[1];\n// " + "x" * 400_000 + "\nh q[0];\n",
                frozenset({"CircuitTooLarge"})),
        Hostile("an hour of ideal simulation (a mid-circuit measurement: Aer runs every shot)",
                noisy_layers(18, 5), frozenset({"JobTooLarge"}), (("shots", 20_000),)),
        Hostile("hours of noisy simulation (a million shots, each its own trajectory)",
                noisy_layers(8, 40), frozenset({"JobTooLarge"}),
                (("backend", "aer.noisy"), ("shots", 1_000_000))),
        Hostile("a 16-qubit state per parameter set (1000 sets of 4,000 gates)",
                Q3 + "input float a;\nqubit[16] q;\n"
                + "".join(f"rx(a) q[{i}];\ncx q[{i}], q[{(i + 1) % 16}];\n"
                          for i in range(16)) * 125,
                frozenset({"JobTooLarge"}),
                (("parameter_sets", [[0.001 * k] for k in range(1000)]),)),
        Hostile("40,000 Pauli strings to group into bases (quadratic memory)",
                Q2 + "qreg q[8];\nh q[0];\n", frozenset({"InvalidObservable"}),
                (("observables", [{"terms": [
                    {"pauli": "".join("IXYZ"[(k >> (2 * i)) & 3] for i in range(8)),
                     "coeff": 1.0} for k in range(1, 40_001)]}]),)),
        Hostile("900,000 empty observables (a byte each on the wire, 230 MB decoded)",
                Q2 + "qreg q[2];\nh q[0];\n", frozenset({"DecodedTooLarge"}),
                (("observables", [{"terms": []}] * 900_000),)),
    ]


def job_bytes(workflow_id: str, program: str, request: tuple = ()) -> bytes:
    fields = {"shots": 8, **dict(request)}
    return codec("JobRequest").encode(job_request(workflow_id=workflow_id, circuit=program,
                                                  **fields))


def produce(settings, records: list[tuple[str, bytes]], topic: str | None = None) -> list[float]:
    """Send records one by one (each acknowledged); their send times (epoch seconds)."""
    async def go():
        producer = AIOKafkaProducer(**kafka_options(settings), max_request_size=2_000_000)
        await producer.start()
        sent = []
        try:
            for key, value in records:
                sent.append(time.time())
                await producer.send_and_wait(topic or f"{settings.topic_prefix}.jobs",
                                             value=value, key=key.encode())
        finally:
            await producer.stop()
        return sent

    return asyncio.run(go())


def dead_letters(settings) -> dict[str, dict]:
    """The latest dead letter per key: its headers as text."""
    found = {}
    for record in topic_records(settings, "deadletter", timeout_s=30):
        found[(record.key or b"").decode(errors="replace")] = {
            name: (value or b"").decode(errors="replace") for name, value in record.headers
        }
    return found


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in task.read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


@dataclass
class RssMonitor:
    """Samples a worker's RSS (and its sandbox processes') every `period_s` in a thread."""

    pid: int
    period_s: float = 0.1
    worker_peak: int = 0
    sandbox_peak: int = 0  # the largest one sandbox process reached
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> RssMonitor:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.worker_peak = max(self.worker_peak, rss_bytes(self.pid))
            for child in children(self.pid):
                self.sandbox_peak = max(self.sandbox_peak, rss_bytes(child))
            self.samples += 1
            self._stop.wait(self.period_s)

    def worker_peak_mib(self) -> float:
        return round(self.worker_peak / 2**20, 1)

    def sandbox_peak_mib(self) -> float:
        return round(self.sandbox_peak / 2**20, 1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
