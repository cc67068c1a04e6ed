"""What a job costs, before (estimate) and after (actual) it runs, and tenant budgets.

Each vendor prices with its own published model (defaults and sources: docs/operations.md,
docs/backends.md); every price names its source:

- Amazon Braket QPU: a fee per task plus a fee per shot;
- Amazon Braket managed simulators (SV1, DM1): per minute of simulation, billed per second,
  with a minimum charge per task;
- IBM Quantum (Pay-As-You-Go): per second of QPU ("quantum") time, billed per job. qlane
  models a job's QPU time as `qpu_seconds_per_job + shots x qpu_seconds_per_shot` (the
  device's default repetition delay per shot), not the simulator's wall time, so the
  estimate before execution and the charge after it agree.

A *task* is one circuit with its shots (Braket bills each circuit submitted as one quantum
task), so a job of C circuits is C tasks even though qlane runs them in one Aer call. Per task:

    charge = max(minimum_usd,
                 per_task_usd + per_shot_usd * shots + per_second_usd * billed_seconds)
    billed_seconds = ceil(seconds / billing_increment_seconds) * billing_increment_seconds

where a job's seconds are split evenly over its circuits. Arithmetic is decimal (prices are
read from their decimal text), so 0.30 + 1000 * 0.00145 is exactly 1.75.

Mitigation multiplies circuits: callers pass the TOTAL number of circuits executed for a job,
including ZNE-folded copies (`mitigated_circuit_count` computes it). The workers' shared
readout calibration is billed to no job (docs/operations.md); a caller that calibrates for
one job alone passes its circuits as `readout_calibration_circuits`.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from decimal import ROUND_CEILING, Decimal
from typing import Any

from workers.errors import UnknownBackend

CHECKED = "as published by AWS (aws.amazon.com/braket/pricing), checked 2025"


def _decimal(value: float | int | str | Decimal, name: str) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    number = value if isinstance(value, Decimal) else Decimal(str(value))
    if not number.is_finite() or number < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
    return number


def _usd(amount: Decimal) -> float:
    return float(amount)


@dataclass(frozen=True)
class Price:
    """The price of running tasks on one backend, in USD."""

    per_task_usd: float = 0.0
    per_shot_usd: float = 0.0
    per_second_usd: float = 0.0
    minimum_usd: float = 0.0  # per task
    billing_increment_seconds: float = 1.0
    source: str = ""
    # QPU-time pricing (IBM): seconds = per job + shots x per shot, billed per job.
    qpu_seconds_per_shot: float = 0.0
    qpu_seconds_per_job: float = 0.0

    def __post_init__(self) -> None:
        for name in ("per_task_usd", "per_shot_usd", "per_second_usd", "minimum_usd",
                     "qpu_seconds_per_shot", "qpu_seconds_per_job"):
            _decimal(getattr(self, name), name)
        if _decimal(self.billing_increment_seconds, "billing_increment_seconds") <= 0:
            raise ValueError("billing_increment_seconds must be > 0")

    @property
    def qpu_time_priced(self) -> bool:
        return bool(self.qpu_seconds_per_shot or self.qpu_seconds_per_job)

    def billed_seconds(self, seconds: Decimal) -> Decimal:
        increment = _decimal(self.billing_increment_seconds, "billing_increment_seconds")
        return (seconds / increment).to_integral_value(ROUND_CEILING) * increment

    def qpu_seconds(self, shots: int) -> Decimal:
        """Modelled QPU time of a job of `shots` shots in total (QPU-time pricing)."""
        return Decimal(str(self.qpu_seconds_per_job)) + _count(shots, "shots") * Decimal(
            str(self.qpu_seconds_per_shot)
        )

    def describe(self) -> str:
        """The price model in one line, for `qlane backends`."""
        if self.qpu_time_priced:
            return (f"USD {self.per_second_usd:g}/s of QPU time (model: "
                    f"{self.qpu_seconds_per_job:g} s/job + {self.qpu_seconds_per_shot:g} s/shot)")
        parts = []
        if self.per_task_usd:
            parts.append(f"USD {self.per_task_usd:g}/task")
        if self.per_shot_usd:
            parts.append(f"USD {self.per_shot_usd:g}/shot")
        if self.per_second_usd:
            parts.append(f"USD {float(Decimal(str(self.per_second_usd)) * 60):g}/min "
                         f"billed per {self.billing_increment_seconds:g} s")
        if self.minimum_usd:
            parts.append(f"min USD {self.minimum_usd:g}/task")
        return " + ".join(parts) or "free"

    def charge(self, circuits: int, shots: int, seconds: float | int | Decimal) -> Decimal:
        """Exact charge for `circuits` tasks sharing `shots` and `seconds` evenly (for
        QPU-time pricing: one job of `shots` shots; `seconds` is not used)."""
        circuits = _count(circuits, "circuits")
        shots = _count(shots, "shots")
        seconds = _decimal(seconds, "seconds")
        if circuits == 0:
            return Decimal(0)
        if self.qpu_time_priced:
            billed = self.billed_seconds(self.qpu_seconds(shots))
            total = Decimal(str(self.per_second_usd)) * billed + circuits * Decimal(
                str(self.per_task_usd)
            )
            return max(Decimal(str(self.minimum_usd)), total)
        # every task is alike, so sum(max(minimum, task)) = max(C * minimum, sum(task))
        total = (
            circuits * Decimal(str(self.per_task_usd))
            + Decimal(str(self.per_shot_usd)) * shots
            + circuits * Decimal(str(self.per_second_usd)) * self.billed_seconds(seconds / circuits)
        )
        return max(circuits * Decimal(str(self.minimum_usd)), total)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Price:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown price fields {sorted(unknown)}; known: {sorted(known)}")
        values = {k: (str(v) if k == "source" else float(v)) for k, v in data.items()}
        return cls(**values)


def _count(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


# --- defaults: Amazon Braket prices, as published by AWS, checked 2025 --------------------------
SV1_PER_MINUTE_USD = "0.075"
SV1 = Price(
    per_second_usd=float(Decimal(SV1_PER_MINUTE_USD) / 60),  # 0.00125
    minimum_usd=float(Decimal(SV1_PER_MINUTE_USD) / 60 * 3),  # 3-second minimum: 0.00375
    billing_increment_seconds=1.0,
    source=f"Amazon Braket SV1 managed simulator: USD 0.075/minute, billed per second, "
    f"3-second minimum per task; {CHECKED}",
)
QPU_TASK_USD = 0.30


def _qpu(device: str, per_shot: float) -> Price:
    return Price(
        per_task_usd=QPU_TASK_USD,
        per_shot_usd=per_shot,
        source=f"Amazon Braket {device}: USD 0.30/task + USD {per_shot}/shot; {CHECKED}",
    )


IQM_GARNET = _qpu("IQM Garnet", 0.00145)
RIGETTI_ANKAA = _qpu("Rigetti Ankaa-3", 0.0009)
IONQ_FORTE = _qpu("IonQ Forte", 0.08)

DM1_PER_MINUTE_USD = "0.075"
DM1 = Price(
    per_second_usd=float(Decimal(DM1_PER_MINUTE_USD) / 60),
    minimum_usd=float(Decimal(DM1_PER_MINUTE_USD) / 60 * 3),
    billing_increment_seconds=1.0,
    source=f"Amazon Braket DM1 managed simulator: USD 0.075/minute, billed per second, "
    f"3-second minimum per task; {CHECKED}",
)

# IBM Quantum Pay-As-You-Go: USD 96 per minute of quantum time = 1.60 per second.
IBM_PER_SECOND_USD = 1.60
IBM_REP_DELAY_S = 250e-6  # default_rep_delay (250 µs) in the devices' published configuration
IBM_CHECKED = (
    "as published by IBM (ibm.com/quantum/pricing, Pay-As-You-Go plan), recalled from 2025, "
    "not re-checked online here"
)


def _ibm(device: str) -> Price:
    return Price(
        per_second_usd=IBM_PER_SECOND_USD,
        qpu_seconds_per_shot=IBM_REP_DELAY_S,
        qpu_seconds_per_job=1.0,
        billing_increment_seconds=1.0,
        source=f"IBM Quantum {device}: USD 96/minute (1.60/s) of QPU time, billed per job in "
        f"whole seconds; QPU time modelled as 1 s per job + 250 µs (the default repetition "
        f"delay) per shot; {IBM_CHECKED}",
    )


IBM_SHERBROOKE = _ibm("ibm_sherbrooke (Eagle)")
IBM_TORINO = _ibm("ibm_torino (Heron)")

# aer.ideal is priced like SV1 (a managed state-vector simulator). aer.noisy stands in for a
# superconducting device (8-qubit ring, rz/sx/x/cx, ~1 % cx error, 1-3 % readout error), so it is
# priced like IQM Garnet, a superconducting QPU of that error class on Braket. The reference
# entries let a table map real providers added later.
DEFAULT_PRICES: dict[str, Price] = {
    "aer.ideal": SV1,
    "aer.noisy": IQM_GARNET,
    "braket.sv1": SV1,
    "iqm.garnet": IQM_GARNET,
    "rigetti.ankaa": RIGETTI_ANKAA,
    "ionq.forte": IONQ_FORTE,
    "braket.dm1": DM1,
    # vendor backends: each priced as its vendor prices the device or service it stands for
    "ibm.sherbrooke": IBM_SHERBROOKE,
    "ibm_runtime.sherbrooke": IBM_SHERBROOKE,
    "ibm.torino": IBM_TORINO,
    "ibm_runtime.torino": IBM_TORINO,
    "braket.local.sv": SV1,
    "braket.local.dm": DM1,
}


@dataclass(frozen=True)
class PriceTable:
    """Prices by backend name; `default` prices any backend not listed (None: unknown -> error)."""

    prices: Mapping[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    default: Price | None = None
    currency: str = "USD"

    def __post_init__(self) -> None:
        if self.currency != "USD":
            raise ValueError(f"prices are in USD, got currency {self.currency!r}")

    def price(self, backend: str) -> Price:
        price = self.prices.get(backend, self.default)
        if price is None:
            raise UnknownBackend(
                f"no price for backend {backend!r}; priced: {', '.join(sorted(self.prices))}"
            )
        return price

    def estimate(
        self,
        backend: str,
        circuits: int,
        shots_per_circuit: int,
        expected_seconds: float | None = None,
    ) -> float:
        """USD before execution. `circuits` is the TOTAL executed, mitigation included
        (see `mitigated_circuit_count`); `expected_seconds` is the whole job's expected backend
        time, None if unknown (then time-priced backends charge their per-task minimum: a
        lower bound)."""
        shots = _count(shots_per_circuit, "shots_per_circuit") * _count(circuits, "circuits")
        seconds = 0 if expected_seconds is None else expected_seconds
        return _usd(self.price(backend).charge(circuits, shots, seconds))

    def actual(self, backend: str, circuits: int, shots: int, simulated_seconds: float) -> float:
        """USD charged after execution: `shots` is the total over all circuits,
        `simulated_seconds` the backend time the job used."""
        return _usd(self.price(backend).charge(circuits, shots, simulated_seconds))

    def to_dict(self) -> dict[str, Any]:
        return {
            "currency": self.currency,
            "prices": {name: price.to_dict() for name, price in sorted(self.prices.items())},
            "default": None if self.default is None else self.default.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PriceTable:
        unknown = set(data) - {"currency", "prices", "default"}
        if unknown:
            raise ValueError(f"unknown price table fields {sorted(unknown)}")
        default = data.get("default")
        return cls(
            prices={name: Price.from_dict(p) for name, p in (data.get("prices") or {}).items()},
            default=None if default is None else Price.from_dict(default),
            currency=data.get("currency", "USD"),
        )

    def merged(self, overrides: PriceTable) -> PriceTable:
        """This table with the other's prices (and default, if it has one) on top."""
        return PriceTable(
            prices={**self.prices, **overrides.prices},
            default=overrides.default if overrides.default is not None else self.default,
        )


def _read_mapping(source: str | pathlib.Path | Mapping[str, Any]) -> Mapping[str, Any]:
    if isinstance(source, Mapping):
        return source
    path = pathlib.Path(source)
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def load_price_table(
    source: str | pathlib.Path | Mapping[str, Any] | None = None, *, merge_defaults: bool = True
) -> PriceTable:
    """A price table from a JSON/YAML file or a dict in `PriceTable.to_dict` form; with
    `merge_defaults` its entries override the defaults, else it is the whole table."""
    if source is None:
        return PriceTable()
    table = PriceTable.from_dict(_read_mapping(source))
    return PriceTable().merged(table) if merge_defaults else table


def mitigated_circuit_count(
    circuits: int,
    zne_scale_factors: Iterable[float] | None = None,
    readout_calibration_circuits: int = 0,
) -> int:
    """Circuits executed for `circuits` logical circuits under mitigation: each logical circuit
    once per ZNE scale factor (once without ZNE), plus the readout-calibration circuits (2 for
    a tensored calibration)."""
    factors = list(zne_scale_factors or ())
    copies = max(1, len(factors))
    return _count(circuits, "circuits") * copies + _count(
        readout_calibration_circuits, "readout_calibration_circuits"
    )


# --- tenant budgets ---------------------------------------------------------------------------
@dataclass(frozen=True)
class TenantBudgets:
    """Configured spending limits per tenant, in USD (pure: the caller keeps what was spent).

    `budgets` names the bounded set of tenants; `default` applies to any other tenant (None: a
    tenant without a budget is not limited).
    """

    budgets: Mapping[str, float] = field(default_factory=dict)
    default: float | None = None

    def __post_init__(self) -> None:
        for tenant, amount in self.budgets.items():
            _decimal(amount, f"budget of {tenant!r}")
        if self.default is not None:
            _decimal(self.default, "default budget")

    def tenants(self) -> list[str]:
        return sorted(self.budgets)

    def budget(self, tenant: str) -> float | None:
        return self.budgets.get(tenant, self.default)

    def remaining(self, tenant: str, spent: float) -> float | None:
        """Budget minus `spent` (negative when overspent); None when the tenant has no budget."""
        budget = self.budget(tenant)
        if budget is None:
            return None
        return _usd(Decimal(str(budget)) - _decimal(spent, "spent"))

    def check(self, tenant: str, spent: float, estimate: float) -> bool:
        """True if a job estimated at `estimate` fits: spent + estimate <= budget."""
        budget = self.budget(tenant)
        total = _decimal(spent, "spent") + _decimal(estimate, "estimate")
        return budget is None or total <= Decimal(str(budget))

    def to_dict(self) -> dict[str, Any]:
        return {"budgets": dict(sorted(self.budgets.items())), "default": self.default}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TenantBudgets:
        unknown = set(data) - {"budgets", "default"}
        if unknown:
            raise ValueError(f"unknown budget fields {sorted(unknown)}")
        default = data.get("default")
        return cls(
            budgets={str(t): float(v) for t, v in (data.get("budgets") or {}).items()},
            default=None if default is None else float(default),
        )

    @classmethod
    def load(cls, source: str | pathlib.Path | Mapping[str, Any] | None) -> TenantBudgets:
        """From a JSON/YAML file or a dict in `to_dict` form; None gives no budgets."""
        return cls() if source is None else cls.from_dict(_read_mapping(source))

