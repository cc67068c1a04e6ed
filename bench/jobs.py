"""The benchmark's fixed, seeded mixed job set (JobRequest dicts, as a client would submit them).

Families, each on `aer.ideal` and `aer.noisy`, each without and with ZNE:

- sample: Bell, GHZ-3, GHZ-4, GHZ-5 (OpenQASM 2), 2000 shots. Without ZNE a counts job.
  qlane rejects ZNE on a counts job ("zne needs observables": there is no expectation value to
  extrapolate), so the with-ZNE variant of a sampling circuit asks for its stabilizer
  expectations instead: Z..Z and X..X (two measurement bases).
- hea: a hardware-efficient ansatz (ry, rz on every qubit, a cx chain; OpenQASM 3 with one
  `input float` per angle) on 2, 3 or 4 qubits with 1 or 2 layers, 3 to 5 parameter sets drawn
  from the job's RNG, observables: the nearest-neighbour ZZ chain and the X magnetisation
  (two bases), 4000 shots.
- qaoa: examples/qaoa_ring4.qasm (QAOA p=1, MaxCut on the 4-ring), 2 to 4 (beta, gamma) sets
  drawn from the job's RNG, the MaxCut cost observable, 4000 shots.

ZNE = {"scale_factors": [1, 3, 5], "folding": "global", "extrapolation": "richardson"}, no
readout mitigation, no DD. Each (backend, zne) cell holds the same mix: 40% sample, 40% hea,
20% qaoa. The order is shuffled with a fixed seed so every stretch of the stream is mixed.

Workflow ids are fixed (`bench-<index>-<family>-<backend>-<zne>`), so simulator seeds (derived
from the workflow id) are the same in every mode and run: the pipeline's counts can be compared
with the in-process loops' counts job by job. `submitted_at_ms` is set at submission time.
"""

from __future__ import annotations

import random
from pathlib import Path

from schemas.codec import fill_defaults

ROOT = Path(__file__).resolve().parents[1]
SEED = 20261121
DEFAULT_JOBS = 480  # 4 partitions get 129/119/113/119 jobs: 2 workers can split it evenly

ZNE = {"scale_factors": [1.0, 3.0, 5.0], "folding": "global", "extrapolation": "richardson"}
MITIGATION_ZNE = {"zne": ZNE, "readout": False, "dynamical_decoupling": False}
MITIGATION_NONE = {"zne": None, "readout": False, "dynamical_decoupling": False}
BACKENDS = ("aer.ideal", "aer.noisy")
SAMPLE_SHOTS = 2000
ESTIMATOR_SHOTS = 4000

BELL = (ROOT / "examples" / "bell.qasm").read_text()
QAOA_RING4 = (ROOT / "examples" / "qaoa_ring4.qasm").read_text()
MAXCUT_RING4 = [
    {"pauli": "IIII", "coeff": 2.0},
    {"pauli": "IIZZ", "coeff": -0.5},
    {"pauli": "IZZI", "coeff": -0.5},
    {"pauli": "ZZII", "coeff": -0.5},
    {"pauli": "ZIIZ", "coeff": -0.5},
]


def ghz_qasm(num_qubits: int) -> str:
    lines = ["OPENQASM 2.0;", 'include "qelib1.inc";', f"qreg q[{num_qubits}];",
             f"creg c[{num_qubits}];", "h q[0];"]
    lines += [f"cx q[{q}],q[{q + 1}];" for q in range(num_qubits - 1)]
    lines.append("measure q -> c;")
    return "\n".join(lines) + "\n"


def hea_qasm(num_qubits: int, layers: int) -> tuple[str, int]:
    """(OpenQASM 3 text, number of parameters): ry, rz per qubit, cx chain, `layers` times,
    then a last ry, rz layer. Parameter names sort in declaration order (p000, p001, ...)."""
    names, body = [], []
    for layer in range(layers + 1):
        for q in range(num_qubits):
            for gate in ("ry", "rz"):
                name = f"p{len(names):03d}"
                names.append(name)
                body.append(f"{gate}({name}) q[{q}];")
        if layer < layers:
            body += [f"cx q[{q}], q[{q + 1}];" for q in range(num_qubits - 1)]
    head = ["OPENQASM 3.0;", 'include "stdgates.inc";']
    head += [f"input float[64] {name};" for name in names] + [f"qubit[{num_qubits}] q;"]
    return "\n".join(head + body) + "\n", len(names)


def observable(*terms: tuple[str, float]) -> dict:
    return {"terms": [{"pauli": p, "coeff": c} for p, c in terms]}


def zz_chain(n: int) -> dict:
    return observable(*(("I" * (n - 2 - i) + "ZZ" + "I" * i, 1.0) for i in range(n - 1)))


def x_sum(n: int) -> dict:
    return observable(*(("I" * (n - 1 - i) + "X" + "I" * i, 1.0) for i in range(n)))


def _sample_job(rng: random.Random, zne: bool) -> tuple[str, dict]:
    n = rng.choice((2, 3, 4, 5))
    name = "bell" if n == 2 else f"ghz{n}"
    circuit = BELL if n == 2 else ghz_qasm(n)
    fields: dict = {"circuit": circuit, "shots": SAMPLE_SHOTS}
    if zne:
        fields["observables"] = [observable(("Z" * n, 1.0)), observable(("X" * n, 1.0))]
        fields["shots"] = ESTIMATOR_SHOTS
    return name, fields


def _hea_job(rng: random.Random, zne: bool) -> tuple[str, dict]:
    n, layers = rng.choice(((2, 1), (2, 2), (3, 1), (3, 2), (4, 1), (4, 2)))
    circuit, count = hea_qasm(n, layers)
    sets = [[round(rng.uniform(-1.5708, 1.5708), 6) for _ in range(count)]
            for _ in range(rng.randint(3, 5))]
    return f"hea{n}x{layers}", {
        "circuit": circuit, "shots": ESTIMATOR_SHOTS, "parameter_sets": sets,
        "observables": [zz_chain(n), x_sum(n)],
    }


def _qaoa_job(rng: random.Random, zne: bool) -> tuple[str, dict]:
    sets = [[round(rng.uniform(0.0, 1.5708), 6), round(rng.uniform(-1.5708, 1.5708), 6)]
            for _ in range(rng.randint(2, 4))]  # (beta, gamma): sorted parameter order
    return "qaoa4", {
        "circuit": QAOA_RING4, "shots": ESTIMATOR_SHOTS, "parameter_sets": sets,
        "observables": [observable(*((t["pauli"], t["coeff"]) for t in MAXCUT_RING4))],
    }


FAMILIES = (("sample", _sample_job, 2), ("hea", _hea_job, 2), ("qaoa", _qaoa_job, 1))


def job_set(count: int = DEFAULT_JOBS, seed: int = SEED) -> list[dict]:
    """`count` JobRequests (a multiple of 4 keeps the cells equal), fixed for (count, seed)."""
    rng = random.Random(seed)
    cells = [(backend, zne) for backend in BACKENDS for zne in (False, True)]
    pattern = [(name, make) for name, make, weight in FAMILIES for _ in range(weight)]
    plan = []
    for i in range(count):
        backend, zne = cells[i % len(cells)]
        family, make = pattern[(i // len(cells)) % len(pattern)]
        plan.append((backend, zne, family, make))
    rng.shuffle(plan)
    jobs = []
    for index, (backend, zne, family, make) in enumerate(plan):
        name, fields = make(rng, zne)
        workflow_id = f"bench-{index:04d}-{name}-{backend.split('.')[1]}-{'zne' if zne else 'raw'}"
        jobs.append(fill_defaults("JobRequest", {
            "workflow_id": workflow_id,
            "backend": backend,
            "mitigation": MITIGATION_ZNE if zne else MITIGATION_NONE,
            "tenant": "bench",
            "metadata": {"family": family, "circuit": name},
            **fields,
        }))
    return jobs


def warmup_jobs(tag: str) -> list[dict]:
    """One job of each kind on each backend (mitigated and not): loads qasm3 parsing, mitiq,
    both backends and their noise views, so timed runs exclude one-time startup costs."""
    rng = random.Random(1)
    jobs = []
    for backend in BACKENDS:
        for zne in (False, True):
            for _, make, _ in FAMILIES:
                name, fields = make(rng, zne)
                jobs.append(fill_defaults("JobRequest", {
                    "workflow_id": f"warmup-{tag}-{name}-{backend.split('.')[1]}-{int(zne)}",
                    "backend": backend,
                    "mitigation": MITIGATION_ZNE if zne else MITIGATION_NONE,
                    "tenant": "bench-warmup",
                    **fields,
                }))
    return jobs


def describe(jobs: list[dict]) -> dict:
    """Counts by family, backend and mitigation, and circuits to run in total."""
    out: dict = {"jobs": len(jobs), "by_family": {}, "by_backend": {}, "zne": 0}
    for job in jobs:
        family = job["metadata"].get("family", "?")
        out["by_family"][family] = out["by_family"].get(family, 0) + 1
        out["by_backend"][job["backend"]] = out["by_backend"].get(job["backend"], 0) + 1
        out["zne"] += job["mitigation"]["zne"] is not None
    return out
