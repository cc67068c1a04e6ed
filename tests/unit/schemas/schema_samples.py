"""Realistic records of every schema, shared by the schema tests (fresh dicts per call)."""

from __future__ import annotations

QASM3 = """OPENQASM 3.0;
include "stdgates.inc";
// ansatz: 2 layers
input float[64] phi;
input float[64] theta;
qubit[2] q;
bit[2] c;
h q[0];
ry(theta) q[0];
ry(phi) q[1];
cx q[0], q[1];
rz(theta) q[1];
cx q[0], q[1];
ry(phi) q[0];
rx(theta) q[1];
barrier q[0], q[1];
c[0] = measure q[0];
c[1] = measure q[1];
"""

BELL_QASM2 = """OPENQASM 2.0;
include "qelib1.inc";
qreg q[2];
creg c[2];
h q[0];
cx q[0],q[1];
measure q -> c;
"""


def typical_job_request() -> dict:
    """The benchmark's typical job: ~300-byte QASM, 3 parameter sets, 2 observables."""
    return {
        "workflow_id": "wf-2f6c1a9e-6b1d-4c1e-9a57-3f0d2f1b8c11",
        "parent_workflow_id": None,
        "circuit": QASM3,
        "circuit_format": "auto",
        "parameter_sets": [[0.1, 0.7], [0.2, 1.4], [0.3, 2.1]],
        "observables": [
            {"terms": [{"pauli": "ZZ", "coeff": 0.5}, {"pauli": "XX", "coeff": 1.0}]},
            {"terms": [{"pauli": "IZ", "coeff": 1.0}, {"pauli": "ZI", "coeff": -0.25}]},
        ],
        "shots": 4096,
        "backend": "aer.ideal",
        "mitigation": {"zne": None, "readout": False, "dynamical_decoupling": False},
        "tenant": "chem-team",
        "priority": 0,
        "deadline_ms": None,
        "cost_limit_usd": None,
        "fallback": [],
        "seed": None,
        "submitted_at_ms": 1763737200000,
        "metadata": {},
        "variational": None,
    }


def full_job_request() -> dict:
    """A job that sets every optional field."""
    return {
        "workflow_id": "wf-rerun-0002",
        "parent_workflow_id": "wf-0001",
        "circuit": QASM3,
        "circuit_format": "qasm3",
        "parameter_sets": [[0.0, 3.141592653589793]],
        "observables": [{"terms": [{"pauli": "YZ", "coeff": -1.5e-3}]}],
        "shots": 100_000,
        "backend": "aer.noisy.fake_brisbane",
        "mitigation": {
            "zne": {
                "scale_factors": [1.0, 2.0, 3.0],
                "folding": "random_gates",
                "extrapolation": "exponential",
            },
            "readout": True,
            "dynamical_decoupling": True,
        },
        "tenant": "acme",
        "priority": -3,
        "deadline_ms": 30_000,
        "cost_limit_usd": 2.5,
        "fallback": ["classical", "aer.ideal"],
        "seed": -(2**63),
        "submitted_at_ms": 1763737200123,
        "metadata": {"team": "chemistry", "ticket": "QL-42", "unicode": "κβ≈µ"},
        "variational": None,
    }


def job_result() -> dict:
    return {
        "workflow_id": "wf-2f6c1a9e-6b1d-4c1e-9a57-3f0d2f1b8c11",
        "parent_workflow_id": None,
        "status": "succeeded",
        "mode": "quantum",
        "fallback_reason": None,
        "error": None,
        "circuits": [
            {
                "parameter_set_index": i,
                "parameter_values": values,
                "basis": basis,
                "shots": 4096,
                "counts": {"00": 2011, "01": 40, "10": 52, "11": 1993},
                "scale_factor": 1.0,  # v2 fields at their defaults: v1 data resolves to this
                "mitigated_probabilities": {},
                "registers": [],  # v4: empty when read from older versions
            }
            for i, values in enumerate([[0.1, 0.7], [0.2, 1.4], [0.3, 2.1]])
            for basis in ("ZZ", "XX")
        ],
        "expectations": [
            {
                "parameter_set_index": i,
                "observable_index": j,
                "observable": "0.5*ZZ + 1.0*XX" if j == 0 else "1.0*IZ - 0.25*ZI",
                "value": 0.9731,
                "std_error": 0.0121,
                "raw_value": 0.9488,
                "raw_std_error": 0.0049,
            }
            for i in range(3)
            for j in range(2)
        ],
        "mitigation": {
            "technique": "zne+readout",
            "parameters": {"scale_factors": "1,3,5", "extrapolation": "richardson"},
            "overhead_circuits": 12,
            "overhead_shots": 49152,
        },
        "shots_used": 73728,
        "provenance": {
            "backend": "aer.ideal",
            "calibration_version": "ideal",
            "optimization_level": 1,
            "seed_transpiler": 1234567890123,
            "seed_simulator": 9876543210,
            "transpile_cache_hit": True,
            "qlane_version": "0.1.0",
            "qiskit_version": "2.6.2",
            "qiskit_aer_version": "0.18.2",
            "mitiq_version": "1.1.0",
        },
        "timings": {
            "queued_s": 0.012,
            "preprocess_s": 0.034,
            "execute_s": 0.51,
            "mitigate_s": 0.02,
            "end_to_end_s": 0.6,
        },
        "completed_at_ms": 1763737200734,
        "variational": None,
    }


def failed_job_result() -> dict:
    return {
        "workflow_id": "wf-0003",
        "parent_workflow_id": None,
        "status": "failed",
        "mode": "fallback",
        "fallback_reason": "BackendUnavailable: circuit breaker open for aer.noisy.fake_brisbane",
        "error": "classical fallback exceeds 24 qubits",
        "circuits": [],
        "expectations": [],
        "mitigation": {
            "technique": "none",
            "parameters": {},
            "overhead_circuits": 0,
            "overhead_shots": 0,
        },
        "shots_used": 0,
        "provenance": {
            "backend": "classical",
            "calibration_version": "",
            "optimization_level": 0,
            "seed_transpiler": 0,
            "seed_simulator": 0,
            "transpile_cache_hit": False,
            "qlane_version": "0.1.0",
            "qiskit_version": "2.6.2",
            "qiskit_aer_version": "0.18.2",
            "mitiq_version": "1.1.0",
        },
        "timings": {
            "queued_s": 0.0,
            "preprocess_s": 0.0,
            "execute_s": 0.0,
            "mitigate_s": 0.0,
            "end_to_end_s": 0.003,
        },
        "completed_at_ms": 1763737200900,
        "variational": None,
    }


def job_status() -> dict:
    return {
        "workflow_id": "wf-0001",
        "state": "retrying",
        "stage": "execute",
        "detail": "BackendUnavailable: timeout after 30 s",
        "attempt": 2,
        "at_ms": 1763737200456,
        "progress": None,
    }


def cost_event() -> dict:
    return {
        "workflow_id": "wf-0001",
        "tenant": "chem-team",
        "backend": "aer.ideal",
        "estimate_usd": 0.0125,
        "actual_usd": 0.0119,
        "shots": 24576,
        "circuits": 6,
        "simulated_seconds": 0.51,
        "budget_remaining_usd": 97.5,
        "at_ms": 1763737200740,
    }


def drift_event() -> dict:
    return {
        "backend": "aer.noisy.fake_brisbane",
        "calibration_version": "2025-11-21T06:00:00Z",
        "canary": "ghz3",
        "statistic_name": "total_variation",
        "statistic": 0.083,
        "threshold": 0.05,
        "p_value": 0.0004,
        "severity": "warning",
        "shots": 8192,
        "round": 17,
        "at_ms": 1763737260000,
    }


def job_cancel() -> dict:
    return {"workflow_id": "wf-0001", "reason": "no longer needed",
            "requested_at_ms": 1763737200999}


def execute_task(framed_request: bytes) -> dict:
    return {
        "workflow_id": "wf-0001",
        "request": framed_request,
        "prepared": bytes(range(256)) * 3,
        "accepted_at_ms": 1763737200010,
        "preprocess_s": 0.034,
        "attempt": 1,
        "fallback_reason": None,
        "estimate_usd": 0.75,
    }


def mitigate_task(framed_request: bytes) -> dict:
    return {
        "workflow_id": "wf-0001",
        "request": framed_request,
        "prepared": b"\x00\xffprepared",
        "counts_json": '[{"00": 2011, "11": 2085}, {"00": 1990, "11": 2106}]',
        "seed_simulator": 9876543210,
        "accepted_at_ms": 1763737200010,
        "preprocess_s": 0.034,
        "execute_s": 0.51,
        "attempt": 3,
        "mode": "fallback",
        "fallback_reason": "retries_exhausted",
    }


def samples() -> dict[str, list[dict]]:
    """Every schema name to a few realistic records of it."""
    from schemas.codec import codec

    framed = codec("JobRequest").encode(typical_job_request())
    return {
        "JobRequest": [typical_job_request(), full_job_request()],
        "JobResult": [job_result(), failed_job_result()],
        "JobStatus": [job_status()],
        "CostEvent": [cost_event(), {**cost_event(), "budget_remaining_usd": None}],
        "DriftEvent": [drift_event()],
        "JobCancel": [job_cancel()],
        "ExecuteTask": [execute_task(framed)],
        "MitigateTask": [mitigate_task(framed)],
    }
