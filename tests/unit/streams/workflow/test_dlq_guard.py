from streams.workflow.dlq_guard import DeadLetterGuard, SourceGuards


def test_trips_on_a_run_of_consecutive_dead_letters():
    guard = DeadLetterGuard(max_consecutive=5, max_ratio=0)
    assert [guard.record(True) for _ in range(4)] == [None] * 4
    assert guard.record(False) is None  # a success breaks the run
    assert [guard.record(True) for _ in range(4)] == [None] * 4
    hold = guard.record(True)
    assert "5 consecutive" in hold.reason and hold.seconds == 30.0


def test_trips_on_the_ratio_only_after_enough_records():
    guard = DeadLetterGuard(max_consecutive=0, max_ratio=0.5, window=10, min_records=10)
    outcomes = [True, False] * 4 + [True]
    assert all(guard.record(o) is None for o in outcomes)  # 9 records: too few to judge
    assert "ratio" in guard.record(True).reason


def test_no_probation_a_hold_needs_a_fresh_run():
    guard = DeadLetterGuard(max_consecutive=3, max_ratio=0, pause_s=10, hold_budget_s=100)
    assert [guard.record(True, now=0) for _ in range(3)][-1] is not None
    assert guard.record(True, now=11) is None and guard.record(True, now=11) is None
    assert guard.record(True, now=11) is not None


def test_outcomes_during_a_hold_do_not_count():
    """Records fetched before a hold are still handled during it: they tripped a second
    hold 75 ms after the first, which spent the budget at once (a red-team run)."""
    guard = DeadLetterGuard(max_consecutive=3, max_ratio=0, pause_s=30, hold_budget_s=60)
    assert [guard.record(True, now=0) for _ in range(3)][-1].seconds == 30
    assert all(guard.record(True, now=0.075 + i * 0.01) is None for i in range(50))
    assert guard.budget_left_s == 30
    assert [guard.record(True, now=31) for _ in range(3)][-1].seconds == 30


def test_the_total_hold_is_bounded_whatever_the_number_of_bad_records():
    guard = DeadLetterGuard(max_consecutive=50, max_ratio=0.5, pause_s=30, hold_budget_s=60)
    holds = [guard.record(True, now=i) for i in range(100_000)]  # one record a second
    assert sum(h.seconds for h in holds if h) == 60
    assert guard.record(False, now=100_000) is None  # a success restores the budget
    holds = [guard.record(True, now=100_001 + i) for i in range(300)]
    assert sum(h.seconds for h in holds if h) == 60


def test_a_partial_last_hold_uses_up_the_budget():
    guard = DeadLetterGuard(max_consecutive=1, max_ratio=0, pause_s=30, hold_budget_s=45)
    assert [h.seconds for h in (guard.record(True, now=40 * i) for i in range(5)) if h] == [
        30, 15]


def test_sources_are_judged_apart():
    guards = SourceGuards(max_consecutive=3, max_ratio=0)
    for _ in range(2):
        assert guards.record("jobs", 0, True) is None
    for _ in range(10):
        assert guards.record("jobs", 1, False) is None
    assert guards.record("jobs.acme", 0, True) is None
    assert guards.record("jobs", 0, True) is not None
    assert guards.for_source("jobs", 1).consecutive == 0


def test_disabled_guard_never_trips():
    guard = DeadLetterGuard(max_consecutive=0, max_ratio=0)
    assert all(guard.record(True) is None for _ in range(1000))
