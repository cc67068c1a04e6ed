"""The client side of qlane: everything that talks to the workers only through Kafka.

* `streams.client.kafka`: build JobRequests, submit them, watch them to their outcome
  (`Client`, `job_request`, `load_job_file`, `read_topic`).
* `streams.client.primitives`: Qiskit primitives V2 (`Sampler`, `Estimator`) whose `run()`
  submits through Kafka; `circuit_export` (how a circuit travels) and `pub_results` (the
  pub results rebuilt from JobResults) are theirs.
* `streams.client.render`: result tables and JSON lines for the CLI.
* `streams.client.replay`: `qlane replay`.

The Faust runtime (`streams.app`, `streams.agents`) never imports this package.
"""

from __future__ import annotations

from streams.client.kafka import (
    REJECTED_BEFORE_ADMISSION,
    Client,
    Outcome,
    decode_dlq_headers,
    job_request,
    load_job_file,
    new_workflow_id,
    read_topic,
)

__all__ = [
    "REJECTED_BEFORE_ADMISSION",
    "Client",
    "Estimator",
    "Outcome",
    "Sampler",
    "decode_dlq_headers",
    "job_request",
    "load_job_file",
    "new_workflow_id",
    "read_topic",
]


def __getattr__(name: str):
    # The primitives import qiskit; the CLI and the tests that only submit jobs do not need it.
    if name in ("Sampler", "Estimator"):
        from streams.client import primitives

        return getattr(primitives, name)
    raise AttributeError(f"module 'streams.client' has no attribute {name!r}")
