"""Local simulator calls in a sandbox process (setting `simulator_process`).

Aer holds the interpreter lock while it simulates, so in the worker a backend call stops the
event loop, the Kafka consumer thread and everything else for its duration, and one worker
uses at most one core. Run in a sandbox process of kind SIMULATE (workers.circuits.sandbox:
the same start-up, bounds, kill-and-replace and typed failures as preparation), the call
overlaps the worker's Kafka work, and a call that hangs or blows its memory bound costs a
sandbox process, not the worker: the wall bound is the call's timeout, and the process is
killed when it passes.

What crosses the pipe: each job's prepared bytes (PreparedJob.to_bytes, which the execute
stage already has from its task record) and its seed, the worker's noise scale for the
backends named, and back a JSON list with each job's counts or its error (class name and
message, rebuilt as the same qlane error). Counts are those of an in-worker call: same
prepared job, seed and noise model, same code (workers.execution.batching.execute_batch).

With `simulator_processes` above 1, a batch is split into that many calls of about equal
work (`shares`), run at once in as many processes: the simulation of one batch can then use
more than one core.

Only the backends in SIMULATED go there, and only while no faults are injected into them:
fault injection (reliability tests, chaos runs) keeps its random sequence in the worker's
registry, so a backend with faults runs in the worker. The calls of the execute stage and of
the fused path go there; a variational job's evaluations (streams/agents/variational.py) and
the drift canary still run in the worker. qlane's device simulations (ibm.*) go there when a
call is estimated above `thread_simulation_max_s` (the process builds a device at its first
call, 5.5 s for ibm.torino, while the worker's warm-up built it in the worker: a light call
stays there); the vendor SDK adapters (ibm_runtime.*, braket.*) never do.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from qiskit import QuantumCircuit

from workers.backends.ibm import DEVICE_PREFIX, DEVICES
from workers.execution.batching import Outcome, timed_batch
from workers.execution.preparation import PreparedJob

# Simulators built and run once when the process starts (the others when first asked for).
WARMED_UP = frozenset({"aer.ideal", "aer.noisy"})
# Every backend qlane simulates itself: the Aer ones, and the devices simulated on qlane's own
# path from a published calibration (workers/backends/device.py). The devices ran in the
# worker's threads only: a job estimated at 0.26 s held a worker's event loop for 73 s (its
# Python runs gate by gate), another tenant's Bell job waiting 64 s (a red-team run).
SIMULATED = WARMED_UP | frozenset(DEVICE_PREFIX + device for device in DEVICES)


@dataclass(frozen=True)
class SimulateRequest:
    """Jobs to run as (prepared bytes, seed), and the worker's state they depend on."""

    items: tuple[tuple[bytes, int], ...]
    noise_scale: dict[str, float] = field(default_factory=dict)
    ideal_qubits: int | None = None
    cpu_s: int | None = None  # the request's CPU bound (RLIMIT_CPU), default the pool's
    max_simulation_seconds: float | None = None  # the worker's limit (execute_batch)


def simulated_here(registry, names: Sequence[str]) -> bool:
    """Whether calls on every one of `names` may run in the simulator process."""
    faults = registry.faults()
    return all(name in SIMULATED and name not in faults for name in names)


def request_for(registry, items: Sequence[tuple[bytes, int, str]],
                cpu_s: int | None = None,
                max_simulation_seconds: float | None = None) -> SimulateRequest:
    """The request for (prepared bytes, seed, backend name) items, with the noise scale
    the worker's registry has for those backends."""
    names = {name for _, _, name in items}
    return SimulateRequest(
        items=tuple((data, seed) for data, seed, _ in items),
        noise_scale={name: registry.noise_scale(name) for name in names},
        ideal_qubits=registry.ideal_qubits,
        cpu_s=cpu_s,
        max_simulation_seconds=max_simulation_seconds,
    )


def shares(sizes: Sequence[int], parts: int) -> list[list[int]]:
    """Indices of jobs split into at most `parts` calls of about equal work, each in the
    jobs' own order; a job's size (its prepared bytes) stands for its work. Counts do not
    depend on the split: every job's counts are those of a call on its own."""
    parts = max(1, min(parts, len(sizes)))
    loads = [0] * parts
    chosen: list[list[int]] = [[] for _ in range(parts)]
    # Largest first, each to the least loaded call (ties: the first), then back in order.
    for index in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        target = loads.index(min(loads))
        chosen[target].append(index)
        loads[target] += sizes[index]
    return [sorted(share) for share in chosen if share]


def outcomes_of(header: dict, count: int) -> list[Outcome]:
    """The outcomes a simulator process answered: counts, or the error rebuilt."""
    from workers.circuits.sandbox import rebuild_error

    answered = header.get("outcomes")
    if not header.get("ok"):
        raise rebuild_error(str(header.get("error")), str(header.get("message", "")))
    if not isinstance(answered, list) or len(answered) != count:
        from workers.errors import SandboxCrashed

        raise SandboxCrashed("the simulator process answered for a different number of jobs")
    return [_outcome(item) for item in answered]


def seconds_of(header: dict, count: int) -> list[float]:
    """Each job's part of the simulator process's own time for the call (measured there, so
    a wait for a free process or for the pipe is not in it)."""
    seconds = header.get("seconds")
    if not isinstance(seconds, list) or len(seconds) != count:
        from workers.errors import SandboxCrashed

        raise SandboxCrashed("the simulator process answered no time for each job")
    return [float(value) for value in seconds]


def _outcome(item: dict) -> Outcome:
    from workers.circuits.sandbox import rebuild_error

    if "counts" in item:
        return [{str(k): int(v) for k, v in counts.items()} for counts in item["counts"]]
    return rebuild_error(str(item.get("error")), str(item.get("message", "")))


def _encoded(outcome: Outcome) -> dict:
    if isinstance(outcome, BaseException):
        name = getattr(outcome, "reason", None) or type(outcome).__name__
        return {"error": name, "message": str(outcome)[:500]}
    return {"counts": outcome}


class Simulator:
    """The simulator process's side: one registry per ideal-backend size it is asked for."""

    def __init__(self) -> None:
        self.registries: dict[int, object] = {}

    def registry(self, ideal_qubits: int | None):
        from workers.backends.registry import BackendRegistry
        from workers.limits import Limits

        size = Limits.max_qubits if ideal_qubits is None else ideal_qubits
        registry = self.registries.get(size)
        if registry is None:
            registry = self.registries[size] = BackendRegistry(
                offered=sorted(SIMULATED), ideal_qubits=size)
        return registry

    def handle(self, request: SimulateRequest) -> tuple[dict, bytes]:
        registry = self.registry(request.ideal_qubits)
        for name, scale in request.noise_scale.items():
            if registry.noise_scale(name) != scale:
                registry.set_noise_scale(name, scale)
        items = [(PreparedJob.from_bytes(data), seed) for data, seed in request.items]
        outcomes, seconds = timed_batch(
            items, registry, max_simulation_seconds=request.max_simulation_seconds
        )
        return {"ok": True, "outcomes": [_encoded(o) for o in outcomes],
                "seconds": seconds}, b""

    def warm_up(self) -> None:
        """Build both simulators (the noisy one converts its noise model) and run each once,
        on a Bell pair written in their native gates: this process never transpiles, and
        loading the transpiler's plugins took 1.9 of its 4.7 s of warm-up."""
        registry = self.registry(None)
        for name in sorted(WARMED_UP):
            backend = registry.get(name)
            backend.run([native_bell(backend)], 10, 1)


def native_bell(backend) -> QuantumCircuit:
    """A Bell pair, measured, in rz, sx and cx (every simulated target has them) on a pair of
    qubits the target couples; as wide as the target when it constrains coupling."""
    if backend.coupling_constrained:
        first, second = next(qargs for qargs in backend.target["cx"] if qargs is not None)
        width = backend.target.num_qubits
    else:
        first, second, width = 0, 1, 2
    bell = QuantumCircuit(width, 2)
    bell.rz(math.pi / 2, first)  # H, up to a global phase: rz(pi/2) sx rz(pi/2)
    bell.sx(first)
    bell.rz(math.pi / 2, first)
    bell.cx(first, second)
    bell.measure([first, second], [0, 1])
    return bell
