"""Every backend a worker can offer, by name, across vendors; built on first use.

| name | vendor | what runs it (module) | extra |
| --- | --- | --- | --- |
| `aer.ideal`, `aer.noisy` | aer | qlane's Aer path (`aer`) | - |
| `ibm.<device>` | ibm | published snapshot, qlane's Aer path (`device`, `ibm`) | ibm |
| `ibm_runtime.<device>` | ibm | qiskit-ibm-runtime SamplerV2 (`ibm`) | ibm |
| `braket.local.sv`, `.dm` | amazon-braket | Braket LocalSimulator (`braket`) | braket |

`names()` lists the backends this worker offers: every known one whose extra is installed,
or only those in `offered`. `get(name)` builds a backend once and returns it (its fault
wrapper when faults are set); a backend whose extra is missing raises `MissingExtra`, an
unknown name `UnknownBackend`. `catalog()` describes every known backend, built or not, for
`qlane backends`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from workers.backends import braket as braket_module
from workers.backends import ibm as ibm_module
from workers.backends.aer import (
    DEFAULT_CALIBRATION_SEED,
    IDEAL,
    IDEAL_CALIBRATION_VERSION,
    NOISY,
    build_ideal,
    build_noisy,
)
from workers.backends.base import BackendInfo, extra_installed
from workers.backends.calibration import CalibrationSnapshot, generate_snapshot
from workers.backends.faults import FaultInjectingBackend, FaultSpec
from workers.backends.noise import validate_noise_scale
from workers.errors import UnknownBackend
from workers.limits import Limits


@dataclass(frozen=True)
class Entry:
    name: str
    vendor: str
    kind: str
    extra: str | None
    description: str
    scalable: bool  # its noise can be scaled (simulated drift)


def _entries() -> dict[str, Entry]:
    entries = [
        Entry(IDEAL, "aer", "simulator", None, "Qiskit Aer, noiseless, no coupling limit", False),
        Entry(NOISY, "aer", "device-simulator", None,
              "8-qubit ring from qlane's own seeded calibration snapshot", True),
    ]
    for device, spec in ibm_module.DEVICES.items():
        entries.append(Entry(
            ibm_module.DEVICE_PREFIX + device, "ibm", "device-simulator", ibm_module.EXTRA,
            f"IBM {device} ({spec.family}): published calibration snapshot, qlane's Aer path",
            True,
        ))
    for device, spec in ibm_module.DEVICES.items():
        entries.append(Entry(
            ibm_module.RUNTIME_PREFIX + device, "ibm", "sdk-adapter", ibm_module.EXTRA,
            f"IBM {device} ({spec.family}) through qiskit-ibm-runtime SamplerV2 "
            "(local testing mode; cloud with an account)",
            False,
        ))
    entries.append(Entry(braket_module.SV, braket_module.VENDOR, "sdk-adapter",
                         braket_module.EXTRA,
                         "Amazon Braket LocalSimulator braket_sv, noiseless, no seed", False))
    entries.append(Entry(braket_module.DM, braket_module.VENDOR, "sdk-adapter",
                         braket_module.EXTRA,
                         "Amazon Braket LocalSimulator braket_dm with a noise model, no seed",
                         False))
    return {e.name: e for e in entries}


ENTRIES = _entries()


class BackendRegistry:
    """The backends this worker provides (see the module docstring).

    `faults` wraps the named backends in a FaultInjectingBackend (reliability tests, chaos
    runs); `set_faults` changes that at runtime. `get` returns the wrapper when one is set.
    `ibm_mode` / `ibm_account` configure the IBM Runtime adapter (local testing mode by
    default). `offered` restricts the backends this worker offers (None: all installed).
    """

    def __init__(
        self,
        noise_scale: dict[str, float] | None = None,
        *,
        ideal_qubits: int = Limits.max_qubits,
        calibration: CalibrationSnapshot | None = None,
        faults: dict[str, FaultSpec | str] | None = None,
        ibm_mode: str = "local",
        ibm_account: ibm_module.IBMAccount | None = None,
        offered: Iterable[str] | None = None,
    ) -> None:
        self._ideal_qubits = ideal_qubits
        self._calibration = calibration or generate_snapshot(seed=DEFAULT_CALIBRATION_SEED)
        self._ibm_mode = ibm_mode
        self._ibm_account = ibm_account
        self._builders: dict[str, Callable[[], Any]] = {name: self._builder(name)
                                                        for name in ENTRIES}
        if offered is not None:
            offered = list(offered)
            for name in offered:
                self._check_known(name)
            self._builders = {n: b for n, b in self._builders.items() if n in offered}
        self._backends: dict[str, Any] = {}
        self._building = threading.Lock()
        self._noise_scale: dict[str, float] = {}
        self._parallel_threads = 0
        self._faults: dict[str, FaultSpec] = {}
        self._faulty: dict[str, FaultInjectingBackend] = {}
        for name, scale in (noise_scale or {}).items():
            self.set_noise_scale(name, scale)
        for name, spec in (faults or {}).items():
            self.set_faults(name, spec)

    def _builder(self, name: str) -> Callable[[], Any]:
        if name == IDEAL:
            return lambda: build_ideal(self._ideal_qubits)
        if name == NOISY:
            return lambda: build_noisy(self._calibration, self._noise_scale.get(NOISY, 1.0))
        if name.startswith(ibm_module.DEVICE_PREFIX):
            return lambda: ibm_module.build_device(name, self._noise_scale.get(name, 1.0))
        if name.startswith(ibm_module.RUNTIME_PREFIX):
            return lambda: ibm_module.IBMRuntimeBackend(
                name, mode=self._ibm_mode, account=self._ibm_account
            )
        return lambda: braket_module.BraketLocalBackend(name)

    def names(self) -> list[str]:
        """The backends offered: known, allowed by `offered`, and with their extra installed."""
        return sorted(n for n in self._builders if extra_installed(ENTRIES[n].extra))

    def known(self) -> list[str]:
        """Every backend name this registry knows, installed or not."""
        return sorted(self._builders)

    def get(self, name: str):
        """The backend called `name` (its fault-injecting wrapper when faults are set)."""
        backend = self._backend(name)
        spec = self._faults.get(name)
        if spec is None:
            return backend
        wrapper = self._faulty.get(name)
        if wrapper is None:
            wrapper = self._faulty[name] = FaultInjectingBackend(backend, spec)
        return wrapper

    def faults(self) -> dict[str, FaultSpec]:
        """The fault specs in force, by backend name."""
        return dict(self._faults)

    def set_faults(self, name: str, spec: FaultSpec | str | None) -> None:
        """Inject `spec`'s faults into backend `name` from now on (None: stop injecting).

        A new spec starts a new wrapper whose random sequence restarts from `spec.seed`.
        """
        self._check_known(name)
        self._faulty.pop(name, None)
        if spec is None:
            self._faults.pop(name, None)
            return
        self._faults[name] = FaultSpec.parse(spec) if isinstance(spec, str) else spec

    @property
    def ideal_qubits(self) -> int:
        return self._ideal_qubits

    def noise_scale(self, name: str) -> float:
        """The scale set on backend `name`'s noise (1.0 unless set_noise_scale changed it)."""
        return self._noise_scale.get(name, 1.0)

    def set_noise_scale(self, name: str, scale: float) -> None:
        """Scale a noisy backend's noise (1.0 = as calibrated). The calibration version stays:
        this simulates the device drifting away from its last calibration."""
        self._check_known(name)
        if not ENTRIES[name].scalable:
            raise ValueError(f"{name} has no calibrated noise model qlane can scale")
        scale = validate_noise_scale(scale)
        self._noise_scale[name] = scale
        backend = self._backends.get(name)
        if backend is not None:
            _scale_noise(backend, scale)

    @property
    def parallel_threads(self) -> int:
        return self._parallel_threads

    def set_parallel_threads(self, threads: int) -> None:
        """OpenMP threads per Aer call on this worker's Aer backends, built and to be built
        (0: Aer's default, every core the process sees)."""
        if threads < 0:
            raise ValueError(f"parallel threads must be >= 0, got {threads}")
        if threads == self._parallel_threads:
            return
        self._parallel_threads = threads
        for backend in list(self._backends.values()):  # a job thread may be building one
            if hasattr(backend, "parallel_threads"):
                backend.parallel_threads = threads

    def info(self, name: str) -> BackendInfo:
        """What `qlane backends` shows for `name`; builds nothing heavier than a snapshot."""
        self._check_known(name)
        entry = ENTRIES[name]
        installed = extra_installed(entry.extra)
        qubits: int | None = None
        gates: tuple[str, ...] = ()
        version: str | None = None
        date: str | None = None
        if name == IDEAL:
            qubits, gates = self._ideal_qubits, ("any Aer gate",)
            version = IDEAL_CALIBRATION_VERSION
        elif name == NOISY:
            snapshot = self._calibration
            qubits, gates = snapshot.num_qubits, tuple(snapshot.basis_gates)
            version, date = snapshot.version, snapshot.calibrated_at
        elif installed and entry.vendor == "ibm":
            device = name.split(".", 1)[1]
            calibration = ibm_module.device_calibration(device)
            qubits, version, date = calibration.num_qubits, calibration.version, \
                calibration.calibrated_at
            gates = tuple(g for g in calibration.basis_gates
                          if g not in ("delay", "measure", "reset", "for_loop", "if_else",
                                       "switch_case", "while_loop"))
        elif installed:
            backend = self._backend(name)
            qubits, version = backend.num_qubits, backend.calibration_version
            gates = braket_module.NATIVE_GATES
        return BackendInfo(
            name=name, vendor=entry.vendor, kind=entry.kind, description=entry.description,
            num_qubits=qubits, native_gates=gates, calibration_version=version,
            calibrated_at=date, price_model="", extra=entry.extra, installed=installed,
        )

    def catalog(self) -> list[BackendInfo]:
        return [self.info(name) for name in self.known()]

    def _check_known(self, name: str) -> None:
        if name not in ENTRIES or (hasattr(self, "_builders") and name not in self._builders):
            raise UnknownBackend(f"unknown backend {name!r}; known: {', '.join(self.known())}")

    def _backend(self, name: str):
        backend = self._backends.get(name)
        if backend is None:
            # Warm-up threads and job threads ask at once at start: build each backend once.
            with self._building:
                backend = self._backends.get(name)
                if backend is None:
                    self._check_known(name)
                    backend = self._backends[name] = self._builders[name]()
                    # After the store: a set_parallel_threads racing with it either finds
                    # the backend stored or has already changed what is read here.
                    if hasattr(backend, "parallel_threads"):
                        backend.parallel_threads = self._parallel_threads
                    # So for a scale set while it was built (ibm.sherbrooke takes seconds):
                    # it was built at the scale before, and ran at it until the next control.
                    _scale_noise(backend, self._noise_scale.get(name, 1.0))
        return backend


def _scale_noise(backend, scale: float) -> None:
    """Set a calibrated backend's noise to `scale` of its calibration, unless it is there."""
    if getattr(backend, "calibration", None) is None or backend.noise_scale == scale:
        return
    backend.noise_model = backend.noise_model_at(scale)
    backend.noise_scale = scale
