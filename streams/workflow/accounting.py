"""Cost estimates, tenant budgets and charges.

Spend is replicated through the control topic (see streams/workflow/control.py) under keys
"spend:<tenant>:<partition>": each partition's spend is written only by the worker that owns
that partition, so there is one writer per key, and every worker sums all partitions to know
a tenant's spend. After a rebalance the new owner continues from the replicated value.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math

from schemas.codec import codec
from streams.ops import metrics
from streams.runtime import Runtime, now_ms
from streams.workflow import control_records
from workers.errors import BudgetExceeded, InvalidJob
from workers.execution.preparation import PreparedJob, simulation_estimate

SPEND = control_records.SPEND

log = logging.getLogger("qlane")


def estimate_usd(runtime: Runtime, prepared: PreparedJob) -> float:
    """Before execution: every circuit the job will run, mitigation overhead included, and
    on a backend priced by its run time, the time the job is estimated to take. Without the
    time, a 1M-shot job on braket.local.sv was estimated at the 3-second minimum, $0.00375,
    passed a `cost_limit_usd` of $0.005 and was charged $0.016 (a red-team run)."""
    price = runtime.prices.price(prepared.backend)
    seconds = None
    # A job as the sandbox returns it (its bytes, no circuits) is not estimated here: at
    # admission it is held at the per-task minimum, then held again for its time once loaded
    # to run (every call's holds and reservations estimate a loaded job).
    if price.per_second_usd and not price.qpu_time_priced and isinstance(prepared, PreparedJob):
        if prepared.simulation_seconds is None:
            prepared.simulation_seconds = simulation_estimate(
                prepared, runtime.registry.get(prepared.backend))
        seconds = prepared.simulation_seconds
    return runtime.prices.estimate(prepared.backend, len(prepared.tasks), prepared.shots,
                                   seconds)


# Spend is summed in floats, rounded to this many decimals (prices have at most 6): the sum
# of 399 charges of 0.00375 came to 1.4962500000000012, and the 400th job, which fits a
# budget of 1.5 exactly, was refused (red-team run).
USD_DECIMALS = 9


def tenant_spent(runtime: Runtime, tenant: str) -> float:
    prefix = f"{SPEND}{tenant}:"
    replicated = {k: v["usd"] for k, v in (runtime.controls or {}).items() if k.startswith(prefix)}
    replicated.update({k: v for k, v in runtime.spend_written.items() if k.startswith(prefix)})
    return round(sum(replicated.values()), USD_DECIMALS)


def show_budget(runtime: Runtime, tenant: str, spent: float | None = None) -> None:
    """The budget gauges of a configured tenant (a bounded set of labels: a default budget
    for others would make any payload's tenant a label). Set at every check as well as every
    charge, so they are there after a restart whose first jobs are all refused."""
    if tenant not in runtime.budgets.budgets:
        return
    spent = tenant_spent(runtime, tenant) if spent is None else spent
    metrics.BUDGET.labels(tenant).set(runtime.budgets.budget(tenant))
    metrics.BUDGET_REMAINING.labels(tenant).set(runtime.budgets.remaining(tenant, spent))


def usd(amount: float) -> str:
    """Dollars as a person reads them: four decimals, or the significant digits of an
    amount too small for them (a limit of 5e-324 read `0.0000`, as if it were none; a
    red-team Java client). + 0.0: a limit of -0.0 (allowed) read `-0.0000`."""
    amount += 0.0
    return f"{amount:.4f}" if amount == 0 or abs(amount) >= 0.00005 else f"{amount:.3g}"


def check_budget(runtime: Runtime, request: dict, estimate: float, *, own_hold: float = 0.0,
                 count: bool = True) -> None:
    """BudgetExceeded unless the job's estimate fits its own limit and its tenant's budget
    beside what is charged and held (`own_hold`: this job's own hold, not counted against
    it). `count=False`: a look before the job's own check, not counted as a refusal."""
    limit = request.get("cost_limit_usd")
    if limit is not None and not (math.isfinite(limit) and limit >= 0):
        # NaN compares false with everything: it read as no limit at all.
        raise InvalidJob(f"cost_limit_usd must be a finite number >= 0, got {limit!r}")
    if limit is not None and estimate > limit:
        # + 0.0: a limit of -0.0 (allowed, it is not below 0) read "limit -0.0000".
        raise BudgetExceeded(f"estimated USD {usd(estimate)} exceeds the job's limit "
                             f"{usd(limit)}")
    tenant = request["tenant"]
    charged = tenant_spent(runtime, tenant)
    show_budget(runtime, tenant, charged)
    spent = charged + max(runtime.reserved_usd.get(tenant, 0.0) - own_hold, 0.0)
    if not runtime.budgets.check(tenant, spent, estimate):
        if count and tenant in runtime.budgets.budgets:
            metrics.BUDGET_REFUSALS.labels(tenant).inc()
        raise BudgetExceeded(
            f"tenant {tenant} has spent USD {usd(spent)} of "
            f"{usd(runtime.budgets.budget(tenant))}; this job is estimated at {usd(estimate)}"
        )


def reserve(runtime: Runtime, request: dict, estimate: float, *, count: bool = True) -> float:
    """Check the budget once more right before a job runs, and hold its estimate until its
    charge (`release`): admission's check alone let the jobs admitted before the first
    charge all run (a $2.00 budget, $0.445 jobs: 8 charged on the staged path, 9 with
    fused_path=idle; red-team run). BudgetExceeded when it does not fit. A batch holds its
    jobs' estimates before its backend call (`count=False`: each job's own check counts)."""
    check_budget(runtime, request, estimate, count=count)
    tenant = request["tenant"]
    runtime.reserved_usd[tenant] = runtime.reserved_usd.get(tenant, 0.0) + estimate
    return estimate


def release(runtime: Runtime, request: dict, estimate: float) -> None:
    tenant = request["tenant"]
    left = runtime.reserved_usd.get(tenant, 0.0) - estimate
    if left > 1e-9:
        runtime.reserved_usd[tenant] = left
    else:
        runtime.reserved_usd.pop(tenant, None)


async def continue_spend(runtime: Runtime, key: str) -> None:
    """Take over a partition's spend from the control topic, read up to what is committed:
    the last owner's charges were committed before the partition moved, but a reader behind
    them gave a total without them to write over. Waits for the catch-up started at the
    assignment (control.settle_spend); one that could not finish is logged there, and the
    last owner's totals read later are added as they come (`add_missed_spend`)."""
    settled = getattr(runtime, "spend_settled", None)  # started at the assignment
    reader = getattr(runtime, "control_reader", None)
    if settled is not None:
        await asyncio.shield(settled)
    elif reader is not None and not await reader.caught_up():
        log.warning("the control topic's reader is behind; %s goes on from what it has read, "
                    "and adds the last owner's charges read later", key)
    # Another first charge of this key may have taken it over during the wait and added to
    # it: reset, its charge was lost (a red-team run: two charges of 0.445 on 1.0 wrote 1.445).
    if key not in runtime.spend_written:
        read = (runtime.controls or {}).get(key, {}).get("usd", 0.0)
        runtime.spend_written[key] = read
        runtime.spend_taken[key] = [read, now_ms()]


def add_missed_spend(runtime: Runtime, key: str, value: dict, written_ms: int) -> None:
    """A spend total of a key this worker owns, read from the control topic: when another
    writer wrote it before this worker took the key over, and it is above the total taken
    over, the charges between are the last owner's that the reader had not read then. They
    are added to this worker's total (which the next charge writes). Going on without them
    wrote a total that every other reader ignored as lower: the last owner's charges were
    lost for good (a red-team run: 5.00 committed, 1.00 read, 2.335 written for 6.335).
    A total written after the takeover (a writer of an earlier release, or one that has not
    seen its partitions go) is no charge this worker missed: left out, as before."""
    taken = runtime.spend_taken.get(key)
    if taken is None or value.get("by") == runtime.writer_id or written_ms >= taken[1]:
        return
    missed = value["usd"] - taken[0]
    if missed <= 0:
        return
    log.warning("%s: the last owner's total %.9g came after this worker took it over at %.9g; "
                "its %.9g are added", key, value["usd"], taken[0], missed)
    taken[0] = value["usd"]
    runtime.spend_written[key] = round(runtime.spend_written[key] + missed, USD_DECIMALS)


async def charge(
    runtime: Runtime, *, request: dict, prepared: PreparedJob, partition: int,
    simulated_seconds: float, estimate: float, charged_backend: str | None,
    answered_by: str | None = None,
) -> dict:
    """Record the job's actual cost, publish its CostEvent, and return the event. No
    `charged_backend`: nothing is charged, and the event names `answered_by` (the classical
    fallback) or the job's backend."""
    tenant = request["tenant"]
    backend = charged_backend or answered_by or prepared.backend
    shots = prepared.shots * len(prepared.tasks)
    actual = 0.0
    if charged_backend is not None:
        actual = runtime.prices.actual(backend, len(prepared.tasks), shots, simulated_seconds)
        key = f"{SPEND}{tenant}:{partition}"
        if key not in runtime.spend_written:
            await continue_spend(runtime, key)
        runtime.spend_written[key] = round(runtime.spend_written[key] + actual, USD_DECIMALS)
        await runtime.send("control", json.dumps(key), json.dumps(
            {"usd": runtime.spend_written[key], "by": runtime.writer_id}).encode())
        metrics.COST.labels(backend).inc(actual)
    remaining = runtime.budgets.remaining(tenant, tenant_spent(runtime, tenant))
    show_budget(runtime, tenant)
    event = {
        "workflow_id": request["workflow_id"], "tenant": tenant, "backend": backend,
        "estimate_usd": estimate, "actual_usd": actual, "shots": shots,
        "circuits": len(prepared.tasks), "simulated_seconds": simulated_seconds,
        "budget_remaining_usd": remaining, "at_ms": now_ms(),
    }
    await runtime.send("cost", request["workflow_id"], codec("CostEvent").encode(event))
    return event
