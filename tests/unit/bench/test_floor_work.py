"""bench/floor.py --work: the relay's quantum work is the batched loop's, record by record."""

import json

from bench.floor import QuantumWork, check_results
from bench.inprocess import run_batched
from bench.jobs import job_set
from schemas.codec import codec


def test_the_relay_answers_every_record_and_its_results_equal_the_batched_loops(
        tmp_path) -> None:
    jobs = job_set(8)[:3]
    encode = codec("JobRequest").encode
    answers = QuantumWork().run([b"not a job", *(encode(job) for job in jobs)])
    assert len(answers) == 4
    assert "error" in json.loads(answers[0])  # answered, not dropped

    reference = tmp_path / "batched.json"
    reference.write_text(json.dumps(run_batched(jobs, batch=32)))
    checked = check_results(answers, reference)
    assert checked["results"] == 4 and checked["job_errors"] == 0
    assert checked["jobs_compared"] == 3
    assert checked["counts_equal"] and checked["estimates_equal"]


def test_a_result_that_differs_from_the_batched_loops_is_reported(tmp_path) -> None:
    reference = tmp_path / "batched.json"
    reference.write_text(json.dumps({"per_job": {
        "a": {"counts": [{"00": 5}], "estimates": [[1.0, 1.0]]},
        "b": {"counts": [{"11": 5}], "estimates": []},
    }}))
    answers = [json.dumps({"workflow_id": "a", "counts": [{"00": 4, "11": 1}],
                           "estimates": [[1.0, 1.0]]}).encode(),
               json.dumps({"workflow_id": "c", "error": "ValueError()"}).encode()]
    checked = check_results(answers, reference)
    assert checked["job_errors"] == 1
    assert checked["missing_in_pipeline"] == ["b"]
    assert checked["count_mismatches"] == 1 and not checked["counts_equal"]
    assert checked["estimates_equal"] is False  # b is missing
