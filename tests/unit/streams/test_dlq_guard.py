from streams.dlq_guard import DeadLetterGuard


def test_trips_on_a_run_of_consecutive_dead_letters():
    guard = DeadLetterGuard(max_consecutive=5, max_ratio=0)
    assert [guard.record(True) for _ in range(4)] == [None] * 4
    assert guard.record(False) is None  # a success breaks the run
    assert [guard.record(True) for _ in range(4)] == [None] * 4
    assert "5 consecutive" in guard.record(True)


def test_trips_on_the_ratio_only_after_enough_records():
    guard = DeadLetterGuard(max_consecutive=0, max_ratio=0.5, window=10, min_records=10)
    outcomes = [True, False] * 4 + [True]
    assert all(guard.record(o) is None for o in outcomes)  # 9 records: too few to judge
    assert "ratio" in guard.record(True)


def test_probation_after_resume_trips_on_first_dead_letter_and_ends_on_success():
    guard = DeadLetterGuard(max_consecutive=3, max_ratio=0)
    for _ in range(3):
        reason = guard.record(True)
    assert reason
    guard.resume()
    assert guard.record(True) is not None
    guard.resume()
    assert guard.record(False) is None
    assert guard.record(True) is None and guard.record(True) is None


def test_disabled_guard_never_trips():
    guard = DeadLetterGuard(max_consecutive=0, max_ratio=0)
    assert all(guard.record(True) is None for _ in range(1000))
