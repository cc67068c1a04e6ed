from __future__ import annotations

import pytest

from fallback.policy import CLASSICAL, FallbackPolicy, FallbackReason


def test_targets_are_tried_in_order_and_never_twice() -> None:
    policy = FallbackPolicy.from_list(["aer.ideal", " classical ", "aer.ideal"])
    assert policy.targets == ("aer.ideal", CLASSICAL)
    assert policy and policy.allows_classical
    assert policy.next_target({"aer.noisy"}) == "aer.ideal"
    assert policy.next_target({"aer.noisy", "aer.ideal"}) == "classical"
    assert policy.next_target({"aer.noisy", "aer.ideal", "classical"}) is None


def test_the_jobs_own_backend_is_skipped_when_tried() -> None:
    policy = FallbackPolicy.from_list(["aer.noisy", "classical"])
    assert policy.next_target({"aer.noisy"}) == "classical"


@pytest.mark.parametrize("names", [None, [], ()])
def test_empty_means_no_fallback(names) -> None:
    policy = FallbackPolicy.from_list(names)
    assert not policy and not policy.allows_classical
    assert policy.next_target(set()) is None


@pytest.mark.parametrize("names", [[""], ["  "], [None], [3], ["classical", ""]])
def test_bad_names_are_refused(names) -> None:
    with pytest.raises(ValueError):
        FallbackPolicy.from_list(names)


def test_reason_vocabulary() -> None:
    assert [r.value for r in FallbackReason] == [
        "retries_exhausted",
        "breaker_open",
        "deadline_missed",
        "budget_exceeded",
    ]
    assert FallbackReason("breaker_open") is FallbackReason.BREAKER_OPEN
    assert f"{FallbackReason.DEADLINE_MISSED}" == "deadline_missed"


def test_a_target_no_worker_offers_is_refused_with_its_name() -> None:
    """A misspelt fallback was found only when the job's backend failed (a red-team run)."""
    from fallback.policy import checked_policy
    from workers.backends.registry import BackendRegistry
    from workers.errors import InvalidJob, UnknownBackend

    known = BackendRegistry().known()
    assert checked_policy(["braket.local.sv", "classical"], known).targets == (
        "braket.local.sv", CLASSICAL)
    with pytest.raises(UnknownBackend, match="'brakett.local.sv' is no backend"):
        checked_policy(["brakett.local.sv", "classical"], known)
    with pytest.raises(InvalidJob):
        checked_policy(["classical", ""], known)
