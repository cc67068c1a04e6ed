"""The CLI's reading of topic names and arguments, without a broker."""

from __future__ import annotations

import time

import pytest

from streams.cli import main, parse_time_ms, schema_of_topic


@pytest.mark.parametrize(("topic", "schema"), [
    ("qlane.jobs", "JobRequest"), ("qlane.jobs-high", "JobRequest"),
    ("qlane.jobs.acme", "JobRequest"), ("qlane.jobs.acme-low", "JobRequest"),
    ("qlane.stage.execute-high", "ExecuteTask"), ("qlane.stage.execute", "ExecuteTask"),
    ("qlane.stage.variational", "JobRequest"), ("qlane.stage.mitigate", "MitigateTask"),
    ("qlane.results.acme", "JobResult"), ("qlane.status.acme", "JobStatus"),
    ("qlane.cost.acme", "CostEvent"), ("qlane.status", "JobStatus"),
    ("qlane.deadletter", None), ("qlane.control", None), ("other.jobs", None),
])
def test_every_tenant_and_lane_of_a_topic_decodes_as_the_shared_one(topic, schema):
    """Tenants' and lanes' records were printed as base64 by tail and dlq show."""
    assert schema_of_topic("qlane", topic) == schema


def test_a_time_that_does_not_parse_is_a_usage_error_not_a_traceback(capsys):
    assert parse_time_ms("2026-12-05T10:00") == 1_796_464_800_000
    assert parse_time_ms("1796464800000") == 1_796_464_800_000
    for text in ("yesterday", "2026-13-01"):
        with pytest.raises(SystemExit) as stopped:
            main(["replay", "deadletter", "--from-time", text, "--dry-run"])
        assert stopped.value.code == 2
        assert "neither epoch milliseconds nor an ISO 8601 time" in capsys.readouterr().err


@pytest.mark.parametrize(("options", "reason"), [
    (["--from-offset", "50", "--to-offset", "10"], "--from-offset 50 is past --to-offset 10"),
    (["--from-offset", "-3"], "--from-offset -3: offsets start at 0"),
    (["--to-offset", "-1"], "--to-offset -1: offsets start at 0"),
    (["--from-time", "2026-12-05T10:00", "--to-time", "2026-12-05T09:00"],
     "--from-time is later than --to-time"),
])
def test_a_range_that_selects_nothing_is_a_usage_error(options, reason, capsys):
    """It printed "0 selected ... 0 skipped" and exited 0, as if the topic held nothing there
    (a red-team run). Refused before any broker is asked (none listens on port 1)."""
    code = main(["replay", "deadletter", *options, "--dry-run", "--broker", "127.0.0.1:1"])
    assert code == 2
    assert reason in capsys.readouterr().err


def test_submit_and_wait_end_within_their_timeout_when_the_broker_never_answers(
        silent_broker, capsys):
    """`submit --wait --timeout 20` returned after 91 s and `cancel --timeout 10` after 79 s
    with two nodes of three down (a red-team run): aiokafka's own waits came first."""
    for command in (["submit", "examples/bell.qasm", "--wait"], ["submit", "examples/bell.qasm"],
                    ["cancel", "wf-anything"]):
        started = time.monotonic()
        code = main([*command, "--broker", silent_broker, "--profile", "kafka",
                     "--timeout", "1.5"])
        took = time.monotonic() - started
        assert code == 1, command
        assert took < 12, (command, took)
        assert "no answer from the broker within 1.5s" in capsys.readouterr().err


def test_a_cancel_of_an_id_outside_the_tenants_ids_is_a_usage_error(silent_broker, capsys):
    """It printed the client's ValueError as a traceback (a red-team run)."""
    code = main(["cancel", "nightly-7", "--tenant", "acme", "--broker", silent_broker,
                 "--profile", "kafka", "--timeout", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "starts with 'acme.'" in err and "Traceback" not in err, err


def test_a_noise_control_for_a_backend_that_cannot_scale_is_refused(silent_broker, capsys):
    """`qlane control noise --backend aer.ideal` wrote a control every worker then raised on
    at each job of that backend: every worker stopped, at every start (a red-team run)."""
    code = main(["control", "noise", "--backend", "aer.ideal", "--scale", "2",
                 "--broker", silent_broker, "--profile", "kafka"])
    err = capsys.readouterr().err
    assert code == 2 and "aer.ideal has no calibrated noise model" in err, err
    assert "aer.noisy" in err


@pytest.mark.parametrize("scale", ["nan", "inf", "-1", "1e309"])
def test_a_noise_scale_the_workers_would_ignore_is_refused(silent_broker, capsys, scale):
    """`--scale nan` was sent, every worker ignored it as malformed, and the command said
    "noise scale of aer.noisy set to nan on every worker" and exited 0 (a red-team run)."""
    code = main(["control", "noise", "--backend", "aer.noisy", f"--scale={scale}",
                 "--broker", silent_broker, "--profile", "kafka"])
    err = capsys.readouterr().err
    assert code == 2 and "noise scale must be finite and >= 0" in err, err


@pytest.mark.parametrize(("field", "said"), [
    ("seed: 1.5", "seed"), ("shots: 1e3", "shots"), ("seed: 9007199254740992", "2^53"),
])
def test_a_job_files_bad_field_is_a_usage_error_before_connecting(tmp_path, capsys, field,
                                                                   said):
    """A field of the wrong type printed a 50-line traceback ending in CorruptRecord, and a
    seed past 2^53 was sent to be dead-lettered (a red-team run)."""
    job = tmp_path / "job.yaml"
    job.write_text(f"circuit_file: bell.qasm\n{field}\n")
    (tmp_path / "bell.qasm").write_text("OPENQASM 2.0;\n")
    started = time.monotonic()
    code = main(["submit", str(job), "--broker", "127.0.0.1:1", "--profile", "kafka",
                 "--timeout", "30"])
    err = capsys.readouterr().err
    assert code == 2 and said in err and "Traceback" not in err, err
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(("workflow_id", "said"), [
    ("", "1 to 1024 bytes"), ("x" * 1025, "1 to 1024 bytes"), ("v#eval3", "evaluation"),
])
def test_a_workflow_id_the_workers_refuse_is_a_usage_error_before_connecting(
        capsys, workflow_id, said):
    """`--workflow-id ""` (an unset shell variable) was sent under a fresh id, so each retry
    ran and was charged again (a red-team run)."""
    started = time.monotonic()
    code = main(["submit", "examples/bell.qasm", "--workflow-id", workflow_id, "--broker",
                 "127.0.0.1:1", "--profile", "kafka", "--timeout", "30"])
    err = capsys.readouterr().err
    assert code == 2 and said in err and "Traceback" not in err, err
    assert time.monotonic() - started < 5


def test_a_worker_fits_its_record_limit_to_the_topics_or_refuses_to_start(monkeypatch):
    """A topic's max.message.bytes below the worker's 1 MB lowers its limit; one too small to
    run with stops the start with the topic named (a changelog limited to 1,200 bytes made a
    worker that started, took jobs and stopped at the first, at every start; a red-team
    run)."""
    import asyncio

    from streams import cli
    from streams.kafka import topic_checks
    from streams.settings import Settings

    settings = Settings(profile="kafka", topic_prefix="t.qlane")
    for answer, expected in ((None, 1_000_000), ((2_000_000, "t.qlane.results"), 1_000_000),
                             ((149_488, "t.qlane.results"), 149_488)):
        async def limit(settings, topics, answer=answer):
            assert "t.qlane.results" in topics and "t.qlane.deadletter" in topics
            return answer

        monkeypatch.setattr(topic_checks, "written_record_limit", limit)
        assert asyncio.run(cli.fit_record_limit(settings)).record_max_bytes == expected

    async def tiny(settings, topics):
        return 688, "t-workflows-changelog"

    monkeypatch.setattr(topic_checks, "written_record_limit", tiny)
    with pytest.raises(cli.RecordLimitTooSmall, match="t-workflows-changelog takes records of "
                                                      "at most 1200 bytes"):
        asyncio.run(cli.fit_record_limit(settings))


def test_a_dead_letter_listing_holds_its_lines_not_the_dead_letters(monkeypatch, capsys):
    """`qlane dlq list --max 1` held every dead letter, values included: 330 MB for 205 of
    900 KB (a red-team run). It keeps one line per dead letter, the last `--max` of them."""
    import tracemalloc
    from types import SimpleNamespace

    from streams.client import replay

    async def select_records(settings, selection):
        for offset in range(60):
            headers = [("qlane.dlq.error.class", b"InvalidCircuit"),
                       ("qlane.dlq.error.message", f"bad {offset}".encode())]
            yield SimpleNamespace(topic=selection.topic, partition=0, offset=offset,
                                  key=f"wf-{offset}".encode(), value=bytes(1_000_000),
                                  headers=headers, timestamp=1000)

    monkeypatch.setattr(replay, "select_records", select_records)
    tracemalloc.start()
    try:
        assert main(["dlq", "list", "--max", "2"]) == 0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["0:58", "0:59"]
    assert "60 dead letters" in err
    assert peak < 20_000_000, peak


def test_a_cluster_that_cannot_answer_a_secured_client_may_be_another_listener(
        monkeypatch, capsys):
    """A SASL_SSL client pointed at a PLAINTEXT listener was told the cluster cannot answer
    now, as if it were down (a red-team run on Kafka 3.9)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    for name, value in {"QLANE_SECURITY_PROTOCOL": "SASL_SSL", "QLANE_SASL_USERNAME": "u",
                        "QLANE_SASL_PASSWORD": "p", "QLANE_PROFILE": "kafka"}.items():
        monkeypatch.setenv(name, value)
    assert main(["tenant", "list", "--broker", address]) == 1
    err = capsys.readouterr().err
    assert "cannot answer now" in err and f"or {address} is not a SASL_SSL listener" in err


def test_a_cancel_asks_a_cluster_that_refuses_connections_again_until_its_timeout(capsys):
    """`qlane cancel --timeout 20` gave up in 0.9 s on a broker restarting, and the cancel
    was lost; submit and the primitives waited (a red-team run)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    started = time.monotonic()
    assert main(["cancel", "wf-x", "--timeout", "2", "--broker", address,
                 "--profile", "kafka"]) == 1
    assert 1.5 < time.monotonic() - started < 15
    assert "did not take a connection within 2s" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["tail", "jobs", "--timeout", "5"], ["dlq", "list"],
                                     ["replay", "deadletter", "--dry-run"]])
def test_a_refusing_broker_is_told_in_one_line_and_leaves_no_client_open(capsys, recwarn,
                                                                         command):
    """`qlane tail` and `qlane dlq list` against a cluster refusing connections printed
    `Unclosed AIOKafkaConsumer` under their one-line error (a red-team run)."""
    import gc

    code = main([*command, "--broker", "127.0.0.1:1", "--profile", "kafka"])
    gc.collect()
    err = capsys.readouterr().err
    assert code == 1 and "the cluster cannot answer now" in err, err
    unclosed = [str(w.message) for w in recwarn if "Unclosed" in str(w.message)]
    assert not unclosed, unclosed


def test_a_job_file_naming_a_missing_circuit_file_is_a_usage_error(tmp_path, capsys):
    """It printed a FileNotFoundError traceback (a red-team run)."""
    job = tmp_path / "job.yaml"
    job.write_text("circuit_file: missing.qasm\n")
    code = main(["submit", str(job), "--broker", "127.0.0.1:1", "--profile", "kafka"])
    err = capsys.readouterr().err
    assert code == 2 and "missing.qasm" in err and "Traceback" not in err, err


def test_a_cancel_on_a_job_topic_is_read_as_a_cancel():
    """`qlane dlq show` of a cancel's dead letter said `undecodable: UnknownSchema` (a
    red-team run): a job topic carries JobCancels beside JobRequests."""
    from schemas.codec import codec
    from streams.cli import schema_of_record

    cancel = codec("JobCancel").encode({"workflow_id": "acme.a1", "requested_at_ms": 1})
    assert schema_of_record("qlane", "qlane.jobs.acme-high", cancel) == "JobCancel"
    assert schema_of_record("qlane", "qlane.jobs", b"garbage") == "JobRequest"
    assert schema_of_record("qlane", "qlane.results", cancel) == "JobResult"
