"""Runtime (streams/runtime.py): what every record it builds holds."""

from __future__ import annotations

from schemas.codec import codec
from streams.runtime import MAX_DETAIL_CHARS, Runtime


def test_a_status_detail_is_cut_so_no_status_can_pass_the_producers_limit():
    status = codec("JobStatus").decode(
        Runtime.status_record("wf", "failed", "preprocess", "x" * 2_000_000))
    assert status["detail"] == "x" * MAX_DETAIL_CHARS + "…"
    short = codec("JobStatus").decode(Runtime.status_record("wf", "failed", "preprocess", "no"))
    assert short["detail"] == "no"
