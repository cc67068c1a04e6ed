"""Schema evolution: every current schema reads every released version of itself."""

from __future__ import annotations

import copy
import io
import json

import avro.schema
import fastavro
import pytest
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

from schemas.codec import (
    INTERNAL,
    PUBLIC,
    SCHEMA_DIR,
    Codec,
    codec,
    fingerprint,
    history_paths,
    load_schema,
    schema_path,
)
from workers.errors import CorruptRecord

from .schema_samples import samples

HISTORY = [(name, path) for name in PUBLIC for path in history_paths(name)]
SAMPLES = samples()


def compatibility(reader: dict, writer: dict) -> SchemaCompatibilityType:
    result = ReaderWriterCompatibilityChecker().get_compatibility(
        reader=avro.schema.parse(json.dumps(reader)), writer=avro.schema.parse(json.dumps(writer))
    )
    return result.compatibility


def frame_with(schema: dict, record: dict) -> bytes:
    out = io.BytesIO(b"\xc3\x01" + fingerprint(schema))
    out.seek(0, io.SEEK_END)
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), record)
    return out.getvalue()


@pytest.mark.parametrize(("name", "path"), HISTORY, ids=lambda x: getattr(x, "name", x))
def test_current_reads_every_released_version(name, path):
    current = load_schema(schema_path(name))
    assert compatibility(reader=current, writer=load_schema(path)) is (
        SchemaCompatibilityType.compatible
    )


@pytest.mark.parametrize("name", PUBLIC)
def test_checker_reports_a_new_required_field_as_incompatible(name):
    reader = copy.deepcopy(load_schema(schema_path(name)))
    reader["fields"].append({"name": "added_without_default", "type": "string", "doc": "x"})
    writer = load_schema(history_paths(name)[-1])
    assert compatibility(reader=reader, writer=writer) is SchemaCompatibilityType.incompatible


def test_checker_reports_a_changed_type_as_incompatible():
    reader = copy.deepcopy(load_schema(schema_path("JobRequest")))
    next(f for f in reader["fields"] if f["name"] == "shots")["type"] = "string"
    writer = load_schema(history_paths("JobRequest")[-1])
    assert compatibility(reader=reader, writer=writer) is SchemaCompatibilityType.incompatible


@pytest.mark.parametrize("name", PUBLIC)
def test_current_schema_is_the_newest_release(name):
    # Changing a .avsc means releasing it: add schemas/history/<Name>.v<N+1>.avsc.
    paths = history_paths(name)
    assert [p.name for p in paths] == [f"{name}.v{n}.avsc" for n in range(1, len(paths) + 1)]
    assert load_schema(schema_path(name)) == load_schema(paths[-1])


def test_history_holds_only_released_public_schemas():
    names = {p.name.split(".")[0] for p in (SCHEMA_DIR / "history").glob("*.avsc")}
    assert names == set(PUBLIC)
    assert not any(history_paths(name) for name in INTERNAL)


@pytest.mark.parametrize(("name", "path"), HISTORY, ids=lambda x: getattr(x, "name", x))
def test_data_written_with_a_released_version_decodes(name, path):
    for record in SAMPLES[name]:
        assert codec(name).decode(frame_with(load_schema(path), record)) == record


# --- resolution to the current schema, with a synthetic next version --------------------
def _next_job_status() -> dict:
    v2 = copy.deepcopy(load_schema(schema_path("JobStatus")))
    v2["fields"].insert(2, {"name": "worker", "type": "string", "default": "", "doc": "Host."})
    v2["fields"] = [f for f in v2["fields"] if f["name"] != "detail"]
    return v2


def test_old_frames_resolve_to_the_current_schema():
    v1, v2 = load_schema(history_paths("JobStatus")[0]), _next_job_status()
    assert compatibility(reader=v2, writer=v1) is SchemaCompatibilityType.compatible
    newer = Codec("JobStatus", v2, [v1, v2])
    old_record = SAMPLES["JobStatus"][0]
    decoded = newer.decode(frame_with(v1, old_record))
    expected = {k: v for k, v in old_record.items() if k != "detail"} | {"worker": ""}
    assert decoded == expected
    new_record = {**expected, "worker": "host-7"}
    assert newer.decode(newer.encode(new_record)) == new_record


def test_an_incompatible_old_version_fails_as_corrupt():
    v1 = load_schema(history_paths("JobStatus")[0])
    broken = copy.deepcopy(v1)
    broken["fields"].append({"name": "required_new", "type": "string", "doc": "x"})
    with pytest.raises(CorruptRecord):
        Codec("JobStatus", broken, [v1]).decode(frame_with(v1, SAMPLES["JobStatus"][0]))


# --- contract hygiene ------------------------------------------------------------------
ALL_AVSC = sorted(SCHEMA_DIR.glob("**/*.avsc"))
CONTRACT_FIELDS = {
    "JobRequest": "workflow_id parent_workflow_id circuit circuit_format parameter_sets "
    "observables shots backend mitigation tenant priority deadline_ms cost_limit_usd fallback "
    "seed submitted_at_ms metadata variational",
    "JobResult": "workflow_id parent_workflow_id status mode fallback_reason error circuits "
    "expectations mitigation shots_used provenance timings completed_at_ms variational",
    "JobStatus": "workflow_id state stage detail attempt at_ms progress",
    "CostEvent": "workflow_id tenant backend estimate_usd actual_usd shots circuits "
    "simulated_seconds budget_remaining_usd at_ms",
    "DriftEvent": "backend calibration_version canary statistic_name statistic threshold "
    "p_value severity shots round at_ms",
    "JobCancel": "workflow_id reason requested_at_ms",
    "ExecuteTask": "workflow_id request prepared accepted_at_ms preprocess_s attempt "
    "fallback_reason estimate_usd",
    "MitigateTask": "workflow_id request prepared counts_json seed_simulator accepted_at_ms "
    "preprocess_s execute_s attempt mode fallback_reason",
}


def _walk(schema, visit):
    """Calls visit(node, "type") for each complex type and visit(field, "field") per field."""
    if isinstance(schema, list):
        for branch in schema:
            _walk(branch, visit)
    elif isinstance(schema, dict):
        visit(schema, "type")
        for field in schema.get("fields", []):
            visit(field, "field")
            _walk(field["type"], visit)
        for key in ("items", "values"):
            if key in schema:
                _walk(schema[key], visit)


@pytest.mark.parametrize("name", PUBLIC + INTERNAL)
def test_contract_field_names(name):
    schema = load_schema(schema_path(name))
    assert schema["name"] == name
    assert [f["name"] for f in schema["fields"]] == CONTRACT_FIELDS[name].split()


def schema_problems(schema: dict) -> list[str]:
    problems = []

    def visit(node, kind):
        label = node.get("name", node.get("type"))
        if "logicalType" in node:
            problems.append(f"{label}: logical type")
        if node.get("type") == "enum":
            problems.append(f"{label}: enum (use a string and document the values)")
        if (kind == "field" or node.get("type") == "record") and not node.get("doc"):
            problems.append(f"{label}: no doc")
        if kind == "field" and isinstance(node["type"], list) and "null" in node["type"]:
            if node["type"][0] != "null" or node.get("default", "missing") is not None:
                problems.append(f"{label}: optional field without a null default")

    _walk(schema, visit)
    return problems


@pytest.mark.parametrize("path", ALL_AVSC, ids=lambda p: str(p.relative_to(SCHEMA_DIR)))
def test_schema_hygiene(path):
    schema = load_schema(path)
    assert schema["namespace"] == "io.qlane.v1"
    assert schema_problems(schema) == []


def test_hygiene_check_finds_problems():
    bad = {
        "type": "record",
        "name": "Bad",
        "fields": [
            {"name": "a", "type": ["null", "string"], "doc": "no default"},
            {"name": "b", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "c", "type": {"type": "enum", "name": "E", "symbols": ["X"]}, "doc": "d"},
        ],
    }
    assert len(schema_problems(bad)) == 5
