from __future__ import annotations

import pkgutil
import subprocess
import sys

import workers

FORBIDDEN = ("faust", "aiokafka", "streams", "schemas")


def python_prints(code: str) -> str:
    """What `code` prints, run in a fresh interpreter (so nothing is imported beforehand)."""
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_workers_never_import_kafka_or_stream_code() -> None:
    modules = [f"workers.{m.name}" for m in pkgutil.iter_modules(workers.__path__)]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = python_prints(code)
    assert len(modules) >= 10
    assert out == ""


def test_preparing_a_job_does_not_import_mitiq() -> None:
    """A preparation sandbox folds and transpiles but never extrapolates: importing mitiq (and
    the frontends it imports: cirq, braket, sympy) tripled each sandbox's start-up."""
    code = (
        "import sys\n"
        "from workers.circuits.sandbox import Preparer\n"
        "Preparer().warm_up()\n"
        "print(','.join(sorted(m for m in ('mitiq', 'cirq', 'braket') if m in sys.modules)))\n"
    )
    out = python_prints(code)
    assert out == ""


def test_the_first_extrapolation_imports_mitiq() -> None:
    code = (
        "import sys\n"
        "from workers.mitigation import zne\n"
        "before = 'mitiq' in sys.modules\n"
        "value = zne.extrapolate('linear', [1, 3], [0.9, 0.7], [0.01, 0.01]).value\n"
        "print(before, 'mitiq.zne.inference' in sys.modules, round(value, 6))\n"
    )
    out = python_prints(code)
    assert out == "False True 1.0"
