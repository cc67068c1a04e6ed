"""bench/run.py: which one-worker variants a default run adds, and how each is summarised."""

from bench.run import default_variant_dropped, summarize_broker

SECTIONS_LIST = ["batched", "pipeline1", "pipeline1sim", "pipeline1thread", "pipeline2",
                 "pipeline2sim", "pipeline2thread"]


def test_a_default_run_adds_only_the_setting_the_default_is_not(monkeypatch) -> None:
    monkeypatch.setenv("QLANE_SIMULATOR_PROCESS", "true")
    assert default_variant_dropped(SECTIONS_LIST) == [
        "batched", "pipeline1", "pipeline1thread", "pipeline2", "pipeline2thread"]
    monkeypatch.setenv("QLANE_SIMULATOR_PROCESS", "false")
    assert default_variant_dropped(SECTIONS_LIST) == [
        "batched", "pipeline1", "pipeline1sim", "pipeline2", "pipeline2sim"]


def _section(rate: float) -> dict:
    return {"jobs": 10, "jobs_per_s": rate, "seconds": 10 / rate, "results": {},
            "cpu_seconds": {"workers": [0.2], "worker_processes": [0.1], "broker": 0.05,
                            "client": 0.01}}


def test_each_variant_is_summarised_against_the_same_loop_and_worker() -> None:
    order = ["batched", "kafka.pipeline1", "kafka.pipeline1thread", "kafka.batched_after",
             "kafka.pipeline2"]
    sections = {"batched": {**_section(40.0), "cpu_seconds": 0.25},
                "kafka.pipeline1": _section(32.0), "kafka.pipeline1thread": _section(24.0),
                "kafka.batched_after": {**_section(36.0), "cpu_seconds": 0.27},
                "kafka.pipeline2": _section(40.0)}
    out = summarize_broker("kafka", {"section_order": order}, sections)
    threads = out["simulator_in_threads"]
    assert "simulator_process" not in out
    assert threads["setting"] == {"QLANE_SIMULATOR_PROCESS": "false"}
    assert threads["pipeline_vs_batched"] == 24.0 / 40.0
    assert threads["pipeline_vs_batched_bracketed"] == 24.0 / 38.0
    assert threads["vs_pipeline_1"] == 24.0 / 32.0
    assert threads["two_vs_this"] == 40.0 / 24.0
    assert out["pipeline_vs_batched"] == 32.0 / 40.0


def test_two_workers_bound_splits_the_ratio_into_ceiling_and_utilization() -> None:
    """One worker at 20 jobs/s and 60 ms per job keeps 1.2 cores busy; two at 30 jobs/s and
    66 ms per job keep 1.98. On 2 cores less 0.1 used by others, the ceiling at 66 ms is
    1.9 / 1.32, and the ratio measured is that ceiling times the share they kept busy."""
    from bench.run import two_workers_bound

    bound = two_workers_bound(20.0, 30.0, 60.0, 66.0, cores=2, foreign_cores=0.1)
    assert round(bound["one_worker_cores"], 6) == 1.2
    assert round(bound["two_workers_cores"], 6) == 1.98
    assert round(bound["ceiling_at_one_worker_cpu"], 6) == round(1.9 / 1.2, 6)
    assert round(bound["ceiling"], 6) == round(1.9 / 1.32, 6)
    assert round(bound["ceiling"] * bound["utilization"], 9) == round(30.0 / 20.0, 9)


def test_the_broker_summary_carries_the_bound_of_its_run() -> None:
    sections = {"batched": {**_section(40.0), "cpu_seconds": 0.25},
                "kafka.pipeline1": _section(20.0), "kafka.pipeline2": _section(30.0)}
    results = {"section_order": list(sections), "machine": {"nproc": 2},
               "foreign_cpu_cores": {"kafka.pipeline2": 0.25}}
    out = summarize_broker("kafka", results, sections)
    bound = out["two_workers_bound"]
    assert bound["cores"] == 1.75
    # _section: 0.26 s of CPU for 10 jobs -> 26 ms per job with either worker count.
    assert round(bound["one_worker_cores"], 6) == round(20.0 * 0.026, 6)
    assert round(bound["ceiling"] * bound["utilization"], 9) == round(out["two_vs_one_workers"], 9)
    assert out["targets"]["two_vs_one_workers"]["ceiling_in_this_run"] == bound["ceiling"]


def test_a_variants_two_workers_are_compared_with_its_one_worker() -> None:
    """pipeline2thread is summarised under simulator_in_threads: its own two_vs_one (against
    pipeline1thread, not the default's pipeline1), its bound and its equality check."""
    sections = {"batched": {**_section(40.0), "cpu_seconds": 0.25},
                "kafka.pipeline1": _section(32.0), "kafka.pipeline1thread": _section(20.0),
                "kafka.pipeline2": _section(40.0), "kafka.pipeline2thread": _section(34.0)}
    results = {"section_order": list(sections), "machine": {"nproc": 2}}
    out = summarize_broker("kafka", results, sections)
    two = out["simulator_in_threads"]["two_workers"]
    assert two["two_vs_one_workers"] == 34.0 / 20.0
    assert out["two_vs_one_workers"] == 40.0 / 32.0
    bound = two["two_workers_bound"]
    assert round(bound["ceiling"] * bound["utilization"], 9) == round(34.0 / 20.0, 9)
    assert "vs_batched" in two
