"""bench/run.py compares a one-worker section with the batched loops around it."""

from bench.run import bracketed, bracketing_batched, summarize_broker, two_vs_one_bracketed

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


def test_two_vs_one_is_also_measured_against_the_loops_around_each_section() -> None:
    """The host slowed by a quarter between the sections: the raw ratio says 1.2, each
    section against the loops around it says 1.6."""
    order = ["batched", "kafka.pipeline1", "kafka.batched_after", "kafka.pipeline2",
             "kafka.batched_after_two"]
    sections = {"batched": {"jobs_per_s": 40.0}, "kafka.batched_after": {"jobs_per_s": 40.0},
                "kafka.batched_after_two": {"jobs_per_s": 20.0}}
    figures = two_vs_one_bracketed(30.0, "kafka.pipeline1", 36.0, "kafka.pipeline2",
                                   {"section_order": order}, sections)
    assert figures["two_workers_batched_before_after_jobs_per_s"] == [40.0, 20.0]
    assert figures["two_workers_vs_batched_bracketed"] == 36.0 / 30.0
    assert round(figures["two_vs_one_workers_bracketed"], 9) == 1.6


def test_no_bracketed_two_vs_one_without_a_loop_after_the_two_workers() -> None:
    order = ["batched", "kafka.pipeline1", "kafka.batched_after", "kafka.pipeline2"]
    sections = {"batched": {"jobs_per_s": 40.0}, "kafka.batched_after": {"jobs_per_s": 40.0}}
    assert two_vs_one_bracketed(30.0, "kafka.pipeline1", 36.0, "kafka.pipeline2",
                                {"section_order": order}, sections) == {}


def test_the_broker_summary_and_its_target_carry_the_bracketed_two_vs_one() -> None:
    def section(rate: float) -> dict:
        return {"jobs": 10, "jobs_per_s": rate, "results": {},
                "cpu_seconds": {"workers": [0.2], "worker_processes": [0.1], "broker": 0.05,
                                "client": 0.01}}

    order = ["batched", "kafka.pipeline1", "kafka.batched_after", "kafka.pipeline2",
             "kafka.batched_after_two"]
    sections = {"batched": {**section(40.0), "cpu_seconds": 0.25},
                "kafka.pipeline1": section(30.0),
                "kafka.batched_after": {**section(40.0), "cpu_seconds": 0.25},
                "kafka.pipeline2": section(36.0),
                "kafka.batched_after_two": {**section(20.0), "cpu_seconds": 0.5}}
    out = summarize_broker("kafka", {"section_order": order, "machine": {"nproc": 2}},
                           sections)
    assert out["two_vs_one_workers"] == 36.0 / 30.0
    assert round(out["two_vs_one_workers_bracketed"], 9) == 1.6
    assert round(out["targets"]["two_vs_one_workers"]["bracketed"], 9) == 1.6
