"""Reliability runs: small in `make test`, full in `make reliability` (QLANE_RELIABILITY_FULL=1)."""

import os

import pytest

FULL = os.environ.get("QLANE_RELIABILITY_FULL") == "1"


def scale(small: int, full: int) -> int:
    return full if FULL else small


@pytest.fixture
def report(request):
    """Figures a run measured, printed at the end (make reliability shows them)."""
    figures: dict = {}
    yield figures
    print(f"\n[{request.node.name}] " + ", ".join(f"{k}={v}" for k, v in figures.items()))
