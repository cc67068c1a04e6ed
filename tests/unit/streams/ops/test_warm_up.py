import logging
import subprocess
import sys

from streams.ops.warm_up import WarmUps


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
    assert "warm-ups done: 3 steps in" in caplog.text.splitlines()[-1]


def test_a_worker_imports_scipy_stats_and_optimize_after_it_starts_not_before() -> None:
    """About a second of a worker's start-up (docs/performance.md "Start-up"): the drift
    test and the variational optimizer import them at first use (the warm-up thread's)."""
    code = (
        "import sys\n"
        "import streams.app\n"
        "print(sorted(m for m in ('scipy.stats', 'scipy.optimize') if m in sys.modules))\n"
        "from workers.drift.detection import required_shots\n"
        "from workers.variational.loop import scipy_minimize\n"
        "required_shots(0.9, 0.8, 0.01, 0.9)\n"
        "scipy_minimize()\n"
        "print(sorted(m for m in ('scipy.stats', 'scipy.optimize') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[:2] == ["[]", "['scipy.optimize', 'scipy.stats']"]


def test_imports_run_first_and_thread_work_waits_for_them() -> None:
    """A job thread imported qiskit_ibm_runtime (or openqasm3) while the warm-up thread's
    mitiq import loaded it too, met a half-initialised package, and valid jobs were
    dead-lettered for good as MissingExtra or InvalidCircuit (red-team runs)."""
    import asyncio
    import threading
    import time
    from types import SimpleNamespace

    from streams.agents.threads import in_thread

    order, imported = [], threading.Event()

    def slow_import():
        time.sleep(0.3)
        order.append("import")
        imported.set()

    warm_ups = WarmUps()
    warm_ups.add("later", lambda: order.append("later"))
    warm_ups.add_import("sdk", slow_import)
    warm_ups.wait_for_imports()  # not started: nothing to wait for
    runtime = SimpleNamespace(executor=None, warm_ups=warm_ups)
    thread = warm_ups.start()
    assert asyncio.run(in_thread(runtime, imported.is_set)) is True
    thread.join(timeout=10)
    assert order == ["import", "later"]


def test_a_worker_imports_every_installed_vendor_sdk_in_its_warm_up() -> None:
    from workers.backends.base import SDK_MODULES

    code = ("import sys\n"
            "from workers.backends.base import import_installed_sdks\n"
            "print(sorted(import_installed_sdks()))\n"
            "print(all(m in sys.modules for m in %r))\n"
            % [m for modules in SDK_MODULES.values() for m in modules])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split("\n")
    assert out[:2] == ["['braket', 'ibm']", "True"]


def test_a_hung_import_is_waited_for_once_not_at_every_thread_call(monkeypatch) -> None:
    import threading
    import time

    from streams.ops import warm_up

    monkeypatch.setattr(warm_up, "IMPORTS_WAIT_S", 0.2)
    hang = threading.Event()
    warm_ups = WarmUps()
    warm_ups.add_import("hung", hang.wait)
    warm_ups.start()
    started = time.monotonic()
    for _ in range(4):
        warm_ups.wait_for_imports()
    hang.set()
    assert time.monotonic() - started < 0.6  # 0.8 s when each call waited again
