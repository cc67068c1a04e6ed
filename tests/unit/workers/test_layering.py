from __future__ import annotations

import pkgutil
import subprocess
import sys

import workers

FORBIDDEN = ("faust", "aiokafka", "streams", "schemas")


def test_workers_never_import_kafka_or_stream_code() -> None:
    modules = [f"workers.{m.name}" for m in pkgutil.iter_modules(workers.__path__)]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert len(modules) >= 10
    assert out == ""
