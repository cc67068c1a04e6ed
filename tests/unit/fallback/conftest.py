"""Fixtures for the fallback tests (the same as tests/unit/workers' ones)."""

from __future__ import annotations

import pytest

from workers.backends.aer import BackendRegistry
from workers.limits import Limits


@pytest.fixture(scope="session")
def registry() -> BackendRegistry:
    return BackendRegistry()


@pytest.fixture(scope="session")
def limits() -> Limits:
    return Limits()
