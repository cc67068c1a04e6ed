"""The result table `qlane submit --wait` prints (streams/client/render.py)."""

from __future__ import annotations

from streams.client.render import result_table


def forged_result(backend: str, counts: dict[str, int], shots: int) -> dict:
    return {
        "workflow_id": "wf", "status": "succeeded", "mode": "quantum", "shots_used": shots,
        "provenance": {"backend": backend, "calibration_version": "v", "seed_simulator": 1},
        "timings": {"end_to_end_s": 0.1, "preprocess_s": 0.01, "execute_s": 0.01,
                    "mitigate_s": 0.0},
        "mitigation": {"technique": "none"}, "expectations": [],
        "circuits": [{"parameter_set_index": 0, "counts": counts, "shots": shots}],
    }


def test_a_results_text_reaches_the_terminal_escaped():
    """A forged result set an operator's terminal title and cleared the screen through the
    table (a red-team run on the embedded broker, where anyone writes the results topic)."""
    table = result_table(forged_result("aer.ideal\x1b]0;PWNED\x07\x1b[2J", {"00\x1b[1A": 7}, 7))
    assert "\x1b" not in table and "\x07" not in table
    assert "\\x1b]0;PWNED" in table and "00\\x1b[1A:1.000" in table
    assert len(table.splitlines()) == 4


def test_a_result_of_zero_shots_is_shown_not_a_traceback():
    assert "00:0.600  11:0.400" in result_table(forged_result("aer.ideal", {"00": 3, "11": 2}, 0))
