"""IBM Quantum: device backends from published calibration snapshots, and the Runtime adapter.

Needs the optional extra `qlane[ibm]` (qiskit-ibm-runtime); without it every backend here
raises `MissingExtra` naming the extra.

- `ibm.<device>` (`DEVICES`): the device's published calibration snapshot and target, as
  shipped in qiskit-ibm-runtime's fake provider, run by qlane's own Aer path
  (`workers.backends.device`), seeded and scalable like `aer.noisy`.
- `ibm_runtime.<device>`: the same device through a `SamplerV2` primitive. In `local` mode (the
  default) it is what qiskit-ibm-runtime's local testing mode runs, Qiskit's
  `BackendSamplerV2` on the fake backend (Aer with the fake backend's own noise model, seeded
  with the job's seed), called directly with that noise model cut to the qubits the call's
  circuits act on (`LocalNoise`): through the runtime's `SamplerV2` each call deep-copied the
  fake backend (3.5 s) and gave Aer the noise of all 133 qubits to convert (4.7 s), 12-17 s
  for one Bell job, where the counts are the same bit for bit in 0.1 s. In `cloud` mode it
  submits through qiskit-ibm-runtime's `SamplerV2`, exactly as a job against IBM hardware
  is submitted: it opens a
  `QiskitRuntimeService` with the account from the worker's settings (`IBMAccount`) and runs on
  the real device; a missing account is a `ConfigurationError` when the backend is built, and
  the token never appears in a message, a log line or a repr.
"""

from __future__ import annotations

import json
import threading
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from cachetools import LRUCache
from qiskit import QuantumCircuit
from qiskit.primitives import BackendSamplerV2
from qiskit.transpiler import Target
from qiskit_aer.noise import NoiseModel

from workers.backends.aer import (
    check_runs_on_target,
    circuit_seeds,
    circuit_shots,
    runs_shot_by_shot,
    seed_segments,
)
from workers.backends.aer_estimates import (
    DENSITY_MATRIX_RATE,
    TEMPLATE_OPERATION_SECONDS,
    active_qubit_count,
    aer_sampling_seconds,
    operation_count,
    trajectory_seconds,
)
from workers.backends.base import ConfigurationError, require_extra
from workers.backends.device import DeviceBackend, DeviceCalibration, GateCalibration
from workers.errors import BackendUnavailable, ExecutionFailed, JobTooLarge

EXTRA = "ibm"
VENDOR = "ibm"
DEVICE_PREFIX = "ibm."
RUNTIME_PREFIX = "ibm_runtime."
# The most memory local mode's Aer may hold for a circuit's state, in the worker: a state
# vector of 16 * 2^n bytes (n active qubits), or, when the shots outnumber its 2^n outcomes
# (Aer's automatic method then simulates the noisy circuit as a density matrix), 16 * 4^n.
# Past Aer's own memory bound the primitive raised "ValueError: could not broadcast ...";
# below it, a 14-qubit GHZ job of 17,000 shots took the worker from 608 MiB to 5,220 MiB
# (red-team runs).
LOCAL_MAX_STATE_BYTES = 2**30
SNAPSHOT_SOURCE = "qiskit-ibm-runtime {version} fake_provider/backends/{device}/props_{device}.json"


@dataclass(frozen=True)
class DeviceSpec:
    fake_class: str  # in qiskit_ibm_runtime.fake_provider
    family: str


DEVICES: dict[str, DeviceSpec] = {
    "sherbrooke": DeviceSpec("FakeSherbrooke", "Eagle r3, 127 qubits, ECR"),
    "torino": DeviceSpec("FakeTorino", "Heron r1, 133 qubits, CZ"),
}


def device_names() -> list[str]:
    return [DEVICE_PREFIX + d for d in DEVICES]


def runtime_names() -> list[str]:
    return [RUNTIME_PREFIX + d for d in DEVICES]


_FAKES: dict[str, Any] = {}
_FAKES_LOCK = threading.Lock()


def fake_backend(device: str, backend_name: str | None = None):
    """The fake-provider backend of `device` (one instance per process)."""
    if device not in DEVICES:
        raise KeyError(device)
    provider = require_extra(
        EXTRA, "qiskit_ibm_runtime.fake_provider", backend_name or DEVICE_PREFIX + device
    )
    with _FAKES_LOCK:
        fake = _FAKES.get(device)
        if fake is None:
            fake = _FAKES[device] = getattr(provider, DEVICES[device].fake_class)()
            fake.target  # noqa: B018 - built once, under the lock
    return fake


def _iso(value: Any) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


@cache
def device_calibration(device: str) -> DeviceCalibration:
    """The published calibration snapshot of `device`, as a DeviceCalibration."""
    fake = fake_backend(device)
    props = fake.properties()
    n = fake.num_qubits

    def qubit_value(q: int, name: str, default: float) -> float:
        try:
            value = props.qubit_property(q, name)[0]
        except Exception:
            return default
        return default if value is None else float(value)

    gates = []
    for gate in props.gates:
        values = {p.name: p.value for p in gate.parameters}
        gates.append(
            GateCalibration(
                gate=gate.gate,
                qubits=tuple(int(q) for q in gate.qubits),
                error=float(values.get("gate_error", 0.0) or 0.0),
                duration_ns=float(values.get("gate_length", 0.0) or 0.0),
            )
        )
    from importlib.metadata import version

    return DeviceCalibration(
        backend=DEVICE_PREFIX + device,
        device=f"ibm_{device}",
        vendor=VENDOR,
        device_version=str(props.backend_version),
        calibrated_at=_iso(props.last_update_date),
        source=SNAPSHOT_SOURCE.format(version=version("qiskit-ibm-runtime"), device=device),
        num_qubits=n,
        basis_gates=tuple(sorted(fake.target.operation_names)),
        # T1/T2 in seconds in the report's SI view; stored in µs like qlane's snapshots.
        t1_us=tuple(qubit_value(q, "T1", float("inf")) * 1e6 for q in range(n)),
        t2_us=tuple(qubit_value(q, "T2", float("inf")) * 1e6 for q in range(n)),
        readout_p1_given_0=tuple(qubit_value(q, "prob_meas1_prep0", 0.0) for q in range(n)),
        readout_p0_given_1=tuple(qubit_value(q, "prob_meas0_prep1", 0.0) for q in range(n)),
        readout_duration_ns=tuple(qubit_value(q, "readout_length", 0.0) * 1e9 for q in range(n)),
        gates=tuple(gates),
    )


def build_device(name: str, scale: float = 1.0) -> DeviceBackend:
    """`ibm.<device>`: the device's snapshot and target on qlane's Aer path."""
    from workers.backends.device import device_backend

    device = name.removeprefix(DEVICE_PREFIX)
    fake = fake_backend(device, name)
    return device_backend(device_calibration(device), fake.target, scale)


# --- the Runtime adapter ----------------------------------------------------------------------
@dataclass(frozen=True)
class IBMAccount:
    """Credentials for the real IBM Quantum service (from settings; never logged)."""

    channel: str = "ibm_quantum_platform"
    token: str | None = field(default=None, repr=False)
    instance: str | None = None
    url: str | None = None

    def __repr__(self) -> str:
        shown = "set" if self.token else "absent"
        return f"IBMAccount(channel={self.channel!r}, instance={self.instance!r}, token={shown})"

    __str__ = __repr__

    @classmethod
    def load(
        cls,
        *,
        token: str | None = None,
        instance: str | None = None,
        channel: str | None = None,
        url: str | None = None,
        secrets_file: str | None = None,
    ) -> IBMAccount:
        """From settings values; a secrets file (JSON with any of token, instance, channel,
        url) fills what the values leave unset. An unreadable file is a ConfigurationError
        that names the file, never its content."""
        values: dict[str, Any] = {}
        if secrets_file:
            try:
                with open(secrets_file, encoding="utf-8") as handle:
                    data = json.load(handle)
            except (OSError, ValueError) as exc:
                raise ConfigurationError(
                    f"IBM secrets file {secrets_file} is unreadable or not JSON "
                    f"({type(exc).__name__})"
                ) from None
            if not isinstance(data, dict):
                raise ConfigurationError(f"IBM secrets file {secrets_file} is not a JSON object")
            values = {k: data[k] for k in ("token", "instance", "channel", "url") if data.get(k)}
        given = {"token": token, "instance": instance, "channel": channel, "url": url}
        values.update({k: v for k, v in given.items() if v})
        return cls(**values)


class IBMRuntimeBackend:
    """A device through qiskit-ibm-runtime's SamplerV2 (see the module docstring).

    `run` submits one sampler job per run of circuits whose seeds continue the Aer sequence
    (+2113) with equal shots, so a circuit's counts depend only on (circuit, shots, seed), as
    for every qlane backend. Count keys are Qiskit's (registers separated by spaces, the last
    register leftmost), rebuilt from the primitive's per-register bit arrays.
    """

    vendor = VENDOR
    coupling_constrained = True
    noise_scale = 1.0
    noiseless = False  # a device, or its fake twin: noisy, with or without a calibration here
    layout_method = "noise_aware"  # see workers.backends.layout

    def __init__(self, name: str, mode: str = "local", account: IBMAccount | None = None):
        self.name = name
        self.device = name.removeprefix(RUNTIME_PREFIX)
        if self.device not in DEVICES:
            raise KeyError(name)
        if mode not in ("local", "cloud"):
            raise ConfigurationError(f"IBM Runtime mode must be local or cloud, got {mode!r}")
        self.mode_name = mode
        self._runtime = require_extra(EXTRA, "qiskit_ibm_runtime", name)
        if mode == "local":
            self._mode = fake_backend(self.device, name)
            self._noise = LocalNoise(self._mode)
            calibration = device_calibration(self.device)
            self.calibration = calibration
            self.calibration_version = calibration.version
            self.calibrated_at = calibration.calibrated_at
        else:
            self._mode = self._cloud_backend(account or IBMAccount())
            self.calibration = None
            props = self._mode.properties()
            self.calibrated_at = _iso(getattr(props, "last_update_date", "unknown"))
            self.calibration_version = (
                f"ibm_{self.device}@{self.calibrated_at}.v{self._mode.backend_version}-live"
            )
        self.target: Target = self._mode.target
        self.num_qubits = self._mode.num_qubits
        self.noise_model = None  # the primitive applies the device's noise itself
        self.jobs = 0

    def _cloud_backend(self, account: IBMAccount):
        if not account.token:
            raise ConfigurationError(
                f"{self.name} in cloud mode needs an IBM Quantum account: set QLANE_IBM_TOKEN "
                "and QLANE_IBM_INSTANCE, or QLANE_IBM_SECRETS_FILE (a JSON file with token, "
                "instance, channel); or use QLANE_IBM_MODE=local"
            )
        try:
            service = self._runtime.QiskitRuntimeService(
                channel=account.channel, token=account.token, instance=account.instance,
                url=account.url,
            )
            return service.backend(f"ibm_{self.device}")
        except Exception as exc:  # the SDK's message can echo the request: keep only its class
            raise BackendUnavailable(
                f"{self.name}: IBM Quantum service refused the account or the device "
                f"({type(exc).__name__})"
            ) from None

    def run(
        self,
        circuits: Sequence[QuantumCircuit],
        shots: int | Sequence[int],
        seed: int | Sequence[int],
    ) -> list[dict[str, int]]:
        circuits = list(circuits)
        if not circuits:
            return []
        shots_list = circuit_shots(shots, len(circuits))
        seeds = circuit_seeds(seed, len(circuits))
        for circuit in circuits:
            check_runs_on_target(self.name, self.target, circuit)
        if self.mode_name == "local":
            for circuit, shots_of_circuit in zip(circuits, shots_list, strict=True):
                check_local_size(self.name, circuit, shots_of_circuit)
        counts: list[dict[str, int] | None] = [None] * len(circuits)
        for segment in seed_segments(range(len(circuits)), seeds, shots_list):
            first = segment[0]
            results = self._sample([circuits[i] for i in segment], shots_list[first], seeds[first])
            for i, c in zip(segment, results, strict=True):
                counts[i] = c
        return counts  # type: ignore[return-value]

    @property
    def calibrates_apart(self) -> bool:
        """Readout calibration qubit by qubit (workers/mitigation/readout.py): local mode
        simulates the state of every qubit a circuit acts on, all 133 of them for the
        all-qubit calibration circuits."""
        return self.mode_name == "local"

    def estimated_seconds(self, circuit: QuantumCircuit, shots: int) -> float:
        """Seconds of one core local mode needs for `circuit`: Aer samples the fake backend's
        noise model shot by shot over the circuit's active qubits, converting each circuit.
        Unestimated, a 20-gate ctrl(10) @ ry job on torino ran 589 s in a worker thread (a
        red-team run). A device in cloud mode spends none of this worker's time."""
        if self.mode_name != "local":
            return 0.0
        operations = operation_count(circuit)
        conversion = operations * TEMPLATE_OPERATION_SECONDS
        active = active_qubit_count(circuit)
        if shots <= 2**active or runs_shot_by_shot(circuit):
            return trajectory_seconds(circuit, shots, operations) + conversion
        # Aer's automatic method takes a density matrix (as check_local_size counts its bytes)
        # and samples it once: 3,003 operations on 2 qubits at 100,000 shots ran 0.23 s,
        # estimated as trajectories at 611 s and refused (a red-team run).
        return (operations * 4.0**active / DENSITY_MATRIX_RATE
                + aer_sampling_seconds(circuit, shots) + conversion)

    def _sample(self, circuits: list[QuantumCircuit], shots: int, seed: int):
        try:
            if self.mode_name == "local":
                options = {"default_shots": shots, "seed_simulator": seed,
                           "run_options": {"noise_model": self._noise.on(circuits)}}
                result = BackendSamplerV2(backend=self._mode, options=options).run(
                    circuits).result()
            else:
                with warnings.catch_warnings():
                    # 0.50+ announces client-side primitives; SamplerV2 stays the documented
                    # submission path for 0.51.
                    warnings.simplefilter("ignore", DeprecationWarning)
                    sampler = self._runtime.SamplerV2(mode=self._mode)
                    sampler.options.default_shots = shots
                    result = sampler.run(circuits).result()
        except Exception as exc:
            raise ExecutionFailed(f"{self.name}: {type(exc).__name__}: {exc}") from exc
        self.jobs += 1
        return [register_counts(c, pub.data) for c, pub in zip(circuits, result, strict=True)]

    def noise_model_at(self, scale: float):
        return None


class LocalNoise:
    """The fake backend's noise model cut to the qubits a call's circuits act on, by qubit set
    (least recently used out). Aer applies a gate's error only where the gate acts, so the
    counts equal those under the whole model, bit for bit under a seed; Aer converts the whole
    model on every call, 4.7 s for the 133 qubits of torino, where two qubits' take 0.01 s."""

    def __init__(self, fake, maxsize: int = 64) -> None:
        self._fake = fake
        self._whole = None
        self._cut: LRUCache = LRUCache(maxsize)
        self._lock = threading.Lock()

    def whole(self):
        """The model the fake backend simulates with (built once, as its first run builds it)."""
        with self._lock:
            if self._whole is None:
                if self._fake.sim is None:
                    self._fake._setup_sim()  # what its first run() does
                self._whole = self._fake.sim.options.noise_model
            return self._whole

    def on(self, circuits: Sequence[QuantumCircuit]):
        qubits = frozenset(q for circuit in circuits for q in acted_on(circuit))
        whole = self.whole()
        with self._lock:
            cut = self._cut.get(qubits)
            if cut is None:
                cut = self._cut[qubits] = noise_on(whole, qubits)
            return cut


def acted_on(circuit: QuantumCircuit) -> set[int]:
    """The indices of the qubits any operation but a barrier acts on."""
    return {circuit.find_bit(q).index for instruction in circuit.data
            if instruction.name != "barrier" for q in instruction.qubits}


def noise_on(model, qubits: frozenset[int]):
    """`model` with only the errors of instructions on `qubits` (its qubit-specific errors and
    readout errors, and its noise passes: a fake backend's model has no others)."""
    if model is None:
        return None
    cut = NoiseModel(basis_gates=list(model.basis_gates))
    for name, errors in model._local_quantum_errors.items():
        for where, error in errors.items():
            if qubits.issuperset(where):
                cut.add_quantum_error(error, name, where, warnings=False)
    for where, error in model._local_readout_errors.items():
        if qubits.issuperset(where):
            cut.add_readout_error(error, where, warnings=False)
    for name, error in model._default_quantum_errors.items():
        cut.add_all_qubit_quantum_error(error, name, warnings=False)
    if model._default_readout_error is not None:
        cut.add_all_qubit_readout_error(model._default_readout_error, warnings=False)
    cut._custom_noise_passes = list(model._custom_noise_passes)
    return cut


def check_local_size(name: str, circuit: QuantumCircuit, shots: int) -> None:
    """JobTooLarge for a circuit whose state local mode's Aer would hold past
    LOCAL_MAX_STATE_BYTES: routing on the device can spread a small circuit over many more of
    its qubits, and shots past 2^n make Aer simulate a density matrix."""
    active = active_qubit_count(circuit)
    density = shots > 2**active
    size = 16 * (4 if density else 2) ** active
    if size > LOCAL_MAX_STATE_BYTES:
        state, advice = ((f"a density matrix ({shots} shots > 2^{active} outcomes)",
                          "fewer shots or qubits") if density
                         else ("a state vector", "fewer qubits or multi-qubit gates"))
        raise JobTooLarge(
            f"{name}: the circuit as routed on the device acts on {active} qubits; local mode "
            f"would hold {state} of {size / 2**30:.3g} GiB, more than "
            f"{LOCAL_MAX_STATE_BYTES / 2**30:g} GiB: {advice}")


def register_counts(circuit: QuantumCircuit, data) -> dict[str, int]:
    """Qiskit count keys from a SamplerV2 DataBin: one bit array per classical register;
    per shot, the registers' bitstrings joined by spaces, the last register leftmost."""
    registers = [r.name for r in circuit.cregs]
    if len(registers) == 1:
        return dict(getattr(data, registers[0]).get_counts())
    strings = [getattr(data, name).get_bitstrings() for name in registers]
    return dict(Counter(" ".join(reversed(parts)) for parts in zip(*strings, strict=True)))
