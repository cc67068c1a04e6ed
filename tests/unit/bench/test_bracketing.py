"""bench/run.py compares a one-worker section with the batched loops around it."""

from bench.run import bracketed, bracketing_batched

ORDER = ["batched", "tansu.pipeline1", "tansu.pipeline1sim", "tansu.batched_after",
         "kafka.pipeline1", "kafka.pipeline1sim", "kafka.batched_after"]
SECTIONS = {"batched": {"jobs_per_s": 40.0}, "tansu.batched_after": {"jobs_per_s": 30.0},
            "kafka.batched_after": {"jobs_per_s": 20.0}}
RESULTS = {"section_order": ORDER}


def test_each_section_takes_the_loop_just_before_and_just_after_it() -> None:
    assert bracketing_batched("tansu.pipeline1sim", RESULTS, SECTIONS) == [40.0, 30.0]
    assert bracketing_batched("kafka.pipeline1", RESULTS, SECTIONS) == [30.0, 20.0]


def test_the_bracketed_ratio_is_against_the_mean_of_the_two_loops() -> None:
    figures = bracketed(25.0, "kafka.pipeline1sim", RESULTS, SECTIONS)
    assert figures["pipeline_vs_batched_bracketed"] == 1.0
    assert figures["batched_before_after_jobs_per_s"] == [30.0, 20.0]


def test_no_bracketed_ratio_without_a_loop_on_both_sides() -> None:
    order = ["batched", "kafka.pipeline1"]
    assert bracketed(25.0, "kafka.pipeline1", {"section_order": order}, SECTIONS) == {}
    failed = {**SECTIONS, "tansu.batched_after": {}}
    assert bracketed(25.0, "tansu.pipeline1", RESULTS, failed) == {}
    assert bracketed(25.0, "absent.pipeline1", RESULTS, SECTIONS) == {}
