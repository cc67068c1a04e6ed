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
