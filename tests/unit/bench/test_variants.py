"""bench/run.py: which one-worker variants a default run adds, and how each is summarised."""

from bench.run import default_variant_dropped, summarize_broker

SECTIONS_LIST = ["batched", "pipeline1", "pipeline1sim", "pipeline1thread", "pipeline2"]


def test_a_default_run_adds_only_the_setting_the_default_is_not(monkeypatch) -> None:
    monkeypatch.setenv("QLANE_SIMULATOR_PROCESS", "true")
    assert default_variant_dropped(SECTIONS_LIST) == [
        "batched", "pipeline1", "pipeline1thread", "pipeline2"]
    monkeypatch.setenv("QLANE_SIMULATOR_PROCESS", "false")
    assert default_variant_dropped(SECTIONS_LIST) == [
        "batched", "pipeline1", "pipeline1sim", "pipeline2"]


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
