"""Configured bounds a job must stay inside before it is prepared."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_qubits: int = 24
    min_shots: int = 1
    max_shots: int = 1_000_000
    max_circuit_bytes: int = 256_000
    max_parameter_sets: int = 1000
    max_observables: int = 64
    # Distinct non-identity Pauli strings over all of a job's observables. Grouping them into
    # measurement bases builds their commutation graph, quadratic in their number (measured,
    # 12 qubits: 1,000 strings 0.3 s and 170 MB, 2,000 1.1 s and 430 MB, 4,000 5.4 s and
    # 1.5 GB; docs/security.md).
    max_observable_terms: int = 2048
    max_circuits_per_job: int = 4096
    # The simulation a job may ask of the Aer backends, as estimated seconds of one core
    # (workers.backends.aer.Backend.estimated_seconds): it multiplies circuits, gates, 2^qubits
    # and, where Aer samples a noisy circuit shot by shot, shots.
    max_simulation_seconds: float = 600.0
    # Counted from the program's text before it is parsed (workers.circuits.static_count).
    max_gate_instances: int = 200_000  # after unrolling gate definitions, loops, broadcasts
    max_loop_iterations: int = 100_000  # every start of a loop body, nested loops multiplied
    max_clbits: int = 1024  # declared classical bits
    max_nesting_depth: int = 64  # brackets and blocks (the parsers recurse on them)
