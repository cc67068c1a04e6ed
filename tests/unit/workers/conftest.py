"""Shared fixtures: one backend registry per test session (backends are built lazily)."""

from __future__ import annotations

import pytest

from workers.backends.aer import BackendRegistry
from workers.circuits.transpile import TranspileCache
from workers.limits import Limits

BELL_QASM2 = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0], q[1];
measure q -> c;
"""

GHZ3_QASM2 = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[3];
h q[0];
cx q[0], q[1];
cx q[1], q[2];
"""

# A 3-qubit ansatz with five parameters, in OpenQASM 3 with inputs.
ANSATZ3_QASM3 = """OPENQASM 3.0;
include "stdgates.inc";
input float a;
input float b;
input float c;
input float d;
input float e;
qubit[3] q;
ry(a) q[0];
ry(b) q[1];
ry(c) q[2];
cx q[0], q[1];
cx q[1], q[2];
rz(d) q[1];
rz(e) q[2];
ry(a + b) q[0];
cx q[2], q[0];
"""


@pytest.fixture(scope="session")
def registry() -> BackendRegistry:
    return BackendRegistry()


@pytest.fixture
def cache() -> TranspileCache:
    return TranspileCache()


@pytest.fixture(scope="session")
def limits() -> Limits:
    return Limits()
