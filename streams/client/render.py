"""Human-readable views of records: result tables and JSON lines for `qlane tail`."""

from __future__ import annotations

import base64
import json

from streams.ops.logs import printable

TOP_COUNTS = 4


def _top_counts(counts: dict[str, int], shots: int) -> str:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:TOP_COUNTS]
    total = shots or sum(counts.values()) or 1  # a forged result with 0 shots: no traceback
    return "  ".join(f"{bits}:{count / total:.3f}" for bits, count in ranked)


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def result_table(result: dict) -> str:
    """The result as a table, every line with its control characters escaped: a result's
    text (ids, backend names, count keys) is a producer's, and a forged one set an
    operator's terminal title and cleared the screen (a red-team run)."""
    return "\n".join(printable(line) for line in _table_lines(result))


def _table_lines(result: dict) -> list[str]:
    provenance = result["provenance"]
    timings = result["timings"]
    lines = [
        f"== {result['workflow_id']}  {result['status']} ({result['mode']})  "
        f"backend={provenance['backend']}  calibration={provenance['calibration_version']}",
        f"   shots used {result['shots_used']}, seed {provenance['seed_simulator']}, "
        f"end-to-end {timings['end_to_end_s']:.2f}s (preprocess {timings['preprocess_s']:.3f}s, "
        f"execute {timings['execute_s']:.3f}s, mitigate {timings['mitigate_s']:.3f}s)",
    ]
    variational = result.get("variational")
    if variational:
        lines.append(
            f"   variational: best value {variational['best_value']:.5f} ± "
            f"{variational['best_std_error']:.5f} after {variational['evaluations']} "
            f"evaluations ({variational['stop_reason']}), parameters "
            f"[{', '.join(f'{v:.3f}' for v in variational['best_parameters'])}]"
        )
    mitigation = result["mitigation"]
    if mitigation["technique"] != "none":
        lines.append(
            f"   mitigation {mitigation['technique']}: +{mitigation['overhead_circuits']} "
            f"circuits, +{mitigation['overhead_shots']} shots"
        )
    if result["expectations"]:
        lines.append(f"   {'set':>3}  {'observable':<30} {'value':>9}  {'± std err':>9}  "
                     f"{'raw':>8}  {'± std err':>9}")
        for row in result["expectations"]:
            lines.append(
                f"   {row['parameter_set_index']:>3}  {_short(row['observable'], 30):<30} "
                f"{row['value']:>9.4f}  {row['std_error']:>9.4f}  "
                f"{row['raw_value']:>8.4f}  {row['raw_std_error']:>9.4f}"
            )
        sampled = [c for c in result["circuits"] if c["basis"] and set(c["basis"]) == {"Z"}
                   and c.get("scale_factor", 1.0) == 1.0]
        if sampled:
            lines.append(f"   {'set':>3}  most frequent computational-basis samples")
            for circuit in sampled:
                lines.append(
                    f"   {circuit['parameter_set_index']:>3}  "
                    f"{_top_counts(circuit['counts'], circuit['shots'])}"
                )
    else:
        lines.append(f"   {'set':>3}  most frequent outcomes (probability)")
        for circuit in result["circuits"]:
            lines.append(
                f"   {circuit['parameter_set_index']:>3}  "
                f"{_top_counts(circuit['counts'], circuit['shots'])}"
            )
    return lines


def _jsonable(value):
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode(), "bytes": len(value)}
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value


def json_line(value) -> str:
    return json.dumps(_jsonable(value), sort_keys=False, separators=(",", ":"))
