import logging

from streams.warm_up import WarmUps


def test_steps_run_in_order_in_one_thread_and_a_failure_does_not_stop_the_rest(caplog) -> None:
    ran = []
    warm_ups = WarmUps()
    warm_ups.add("first", lambda: ran.append("first"))
    warm_ups.add("broken", lambda: 1 / 0)
    warm_ups.add("last", lambda: ran.append("last"))
    with caplog.at_level(logging.INFO, logger="qlane"):
        warm_ups.start().join(timeout=10)
    assert ran == ["first", "last"]
    assert "warm-up of the broken failed" in caplog.text
    assert "first ready in" in caplog.text and "last ready in" in caplog.text
