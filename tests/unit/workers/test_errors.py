"""Which failures are the job's own input's doing (counted `rejected`, not paging)."""

from __future__ import annotations

import pytest

from workers import errors


@pytest.mark.parametrize("error", [
    errors.UndecodableRecord, errors.RecordTooLarge, errors.ResultTooLarge, errors.KeyMismatch,
    errors.InvalidCircuit, errors.JobTooLarge, errors.IdempotencyConflict,
    errors.TenantMismatch, errors.SimulationTimeout, errors.BudgetExceeded,
    # One tenant's 1 ms deadlines paged QlaneErrorRatioHigh as `failed` (a red-team run).
    errors.DeadlineExceeded,
    # Its whole CPU-time bound, which no other attempt would spend differently.
    errors.SandboxCpuExceeded,
])
def test_the_jobs_own_doing_is_an_input_fault(error):
    assert error.input_fault


@pytest.mark.parametrize("error", [
    errors.ExecutionFailed, errors.BackendUnavailable, errors.SandboxCrashed,
    errors.PoisonRecord, errors.StagePaused,
])
def test_the_systems_doing_is_not(error):
    assert not error.input_fault
