"""What every backend offers, whatever its vendor, and the errors vendor adapters share.

A backend is anything with the attributes and the `run` method of `BackendProtocol`: the Aer
simulators (`workers.backends.aer`), the device backends built from real calibration snapshots
(`workers.backends.device`), the IBM Runtime adapter (`workers.backends.ibm`), the Amazon
Braket adapter (`workers.backends.braket`) and the fault-injecting wrapper
(`workers.backends.faults`). The execution path (`workers.execution`) only uses this protocol.

Vendor SDKs are optional extras of the `qlane` package: `require_extra` imports one and, when
it is missing, raises `MissingExtra`, which names the extra to install. `MissingExtra` is an
`UnknownBackend` (a permanent error): a job naming a backend whose extra this worker lacks is
dead-lettered with that message, never retried.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from qiskit import QuantumCircuit
from qiskit.transpiler import Target

from workers.errors import PermanentError, UnknownBackend

EXTRAS = {"ibm": "qiskit_ibm_runtime", "braket": "braket.devices"}  # the module each provides


class MissingExtra(UnknownBackend):
    """The backend needs a vendor SDK that is not installed (an optional extra of qlane)."""


class ConfigurationError(PermanentError):
    """The worker's configuration cannot serve the backend (e.g. no account for a real
    vendor service). Never carries a secret in its message."""


@runtime_checkable
class BackendProtocol(Protocol):
    """The interface of every backend.

    `run(circuits, shots, seed)` returns one Qiskit count dict per circuit (clbit 0 rightmost,
    registers separated by spaces), in order; `shots` and `seed` are one value for all circuits
    or one per circuit (an int seed `s` means `s, s+2113, ...`). A backend whose vendor takes
    no seed says so with `seeded = False`; its counts are then random draws.

    A backend that binds parameters itself says so with `binds_parameters = True`; its `run`
    also takes `bindings` (one parameter-value map per circuit, None for a bound circuit) and
    may then get a parameterized template many times (workers/backends/aer.py). Every other
    backend gets bound circuits only (`workers.execution.preparation.backend_circuits`).
    """

    name: str
    vendor: str
    num_qubits: int
    calibration_version: str
    target: Target
    coupling_constrained: bool
    seeded: bool

    def run(
        self,
        circuits: Sequence[QuantumCircuit],
        shots: int | Sequence[int],
        seed: int | Sequence[int],
    ) -> list[dict[str, int]]: ...


@dataclass(frozen=True)
class BackendInfo:
    """One line of `qlane backends`: what a worker would offer, built or not."""

    name: str
    vendor: str
    kind: str  # simulator | device-simulator | sdk-adapter
    description: str
    num_qubits: int | None
    native_gates: tuple[str, ...]
    calibration_version: str | None
    calibrated_at: str | None
    price_model: str
    extra: str | None  # the optional extra it needs, None: always available
    installed: bool

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["native_gates"] = list(self.native_gates)
        return values


def extra_installed(extra: str | None) -> bool:
    """Whether the vendor SDK of `extra` can be imported (None: nothing needed)."""
    if extra is None:
        return True
    # find_spec, not an import: the SDKs take seconds to import and a listing needs none
    try:
        return importlib.util.find_spec(EXTRAS[extra]) is not None
    except (ImportError, ValueError):
        return False


# One import of a vendor SDK at a time: qiskit_ibm_runtime imported from two threads at once
# (the backend warm-up and a job) fails with "partially initialized module" (seen in CI).
SDK_IMPORT_LOCK = threading.RLock()


# The modules of each extra the backends import (`require_extra`).
SDK_MODULES = {
    "ibm": ("qiskit_ibm_runtime", "qiskit_ibm_runtime.fake_provider"),
    "braket": ("braket.devices", "braket.circuits", "braket.circuits.noise_model",
               "qiskit_braket_provider.providers.adapter"),
}


def import_installed_sdks() -> list[str]:
    """Import the modules of every installed extra (a worker's warm-up, before its job
    threads run); the extras imported."""
    imported = []
    for extra, modules in SDK_MODULES.items():
        if extra_installed(extra):
            for module in modules:
                require_extra(extra, module, f"the [{extra}] backends")
            imported.append(extra)
    return imported


def require_extra(extra: str, module: str, backend: str) -> Any:
    """Import `module` of the vendor SDK behind `extra`, or raise MissingExtra naming it."""
    try:
        with SDK_IMPORT_LOCK:
            return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(
            f"backend {backend!r} needs the optional extra [{extra}] "
            f"(missing module {exc.name or module!r}): pip install 'qlane[{extra}]'"
        ) from exc
