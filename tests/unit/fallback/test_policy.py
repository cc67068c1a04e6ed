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
