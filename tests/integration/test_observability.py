"""A worker with its web port: /metrics moves as jobs flow; injected drift is reported."""

from __future__ import annotations

import asyncio
import re
import select
import socket
import time
import urllib.error
import urllib.request

import pytest

from schemas.codec import codec
from streams.brokers.tansu import free_port
from streams.client import job_request
from streams.kafka.topics import ensure_topics
from tests.integration.test_cli import qlane
from tests.support import (
    BELL,
    session_settings,
    start_worker,
    stop_worker,
    submit_and_wait,
    topic_records,
    wait_for,
    wait_until_ready,
)

WEB_MAX_CONNECTIONS = 20
WEB_IDLE_TIMEOUT_S = 5.0


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.match(r"^(qlane_\S+?)(\{[^}]*\})?\s+(\S+)$", line)
        if match:
            samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples


@pytest.fixture(scope="module")
def monitored(broker_address, tmp_path_factory):
    settings = session_settings(*broker_address, tag="obs")
    asyncio.run(ensure_topics(settings))
    port = free_port()
    log = tmp_path_factory.mktemp("obs") / "worker.log"
    process = start_worker(settings, log, web_port=port, env={
        "QLANE_DRIFT_PERIOD_S": "1.5", "QLANE_WEB_MAX_CONNECTIONS": str(WEB_MAX_CONNECTIONS),
        "QLANE_WEB_IDLE_TIMEOUT_S": str(WEB_IDLE_TIMEOUT_S)})
    try:
        wait_until_ready(settings, log)
        yield settings, port, process, log
    finally:
        stop_worker(process)


def test_metrics_move_as_jobs_flow(monitored):
    settings, port, _, log = monitored
    jobs = [job_request(circuit=BELL, shots=50) for _ in range(3)]
    assert {o.state for o in submit_and_wait(settings, jobs, 150).values()} == {"done"}, \
        log.read_text()[-3000:]
    before = scrape(port)
    more = [job_request(circuit=BELL, shots=50) for _ in range(4)]
    more.append(job_request(circuit="OPENQASM 2.0;\nqreg q[1];\nbogus q[0];"))
    outcomes = submit_and_wait(settings, more, 120)
    assert sorted(o.state for o in outcomes.values()) == ["done"] * 4 + ["failed"]
    ok = 'qlane_jobs_total{outcome="ok",stage="mitigate"}'
    failed = 'qlane_dead_letters_total{reason="InvalidCircuit",stage="preprocess"}'
    # bad input is `rejected`, not `failed`: the error-ratio alert pages on the system only
    rejected = 'qlane_jobs_total{outcome="rejected",stage="preprocess"}'
    not_failed = 'qlane_jobs_total{outcome="failed",stage="preprocess"}'

    def moved(samples):
        return tuple(samples.get(name, 0) - before.get(name, 0)
                     for name in (ok, failed, rejected, not_failed))

    def scrape_when_counted():  # a stage counts a job just after it sends the job's status
        samples = scrape(port)
        return samples if moved(samples) == (4, 1, 1, 0) else None

    after = wait_for(scrape_when_counted, 10)
    assert after, moved(scrape(port))
    assert after['qlane_stage_duration_seconds_count{stage="execute"}'] >= 7
    assert after["qlane_last_progress_timestamp_seconds"] > time.time() - 60
    # Its streams run: no assignment pending (QlaneAssignmentStuck).
    assert after["qlane_assignment_pending_seconds"] == 0

    def lag_series():  # lag is sampled every 5 s
        return [name for name in scrape(port) if name.startswith("qlane_consumer_lag{")]

    assert wait_for(lag_series, timeout_s=15), "no consumer lag series"


def test_injected_drift_produces_a_drift_event_and_moves_the_metric(monitored):
    settings, port, _, log = monitored

    def drift_events():
        return [codec("DriftEvent").decode(r.value) for r in topic_records(settings, "drift")]

    baseline_events = wait_for(drift_events, timeout_s=90)
    assert baseline_events, log.read_text()[-3000:]
    assert all(e["severity"] == "none" for e in baseline_events)
    assert scrape(port)['qlane_drift_alarm{backend="aer.noisy"}'] == 0

    done = qlane(settings, "control", "noise", "--backend", "aer.noisy", "--scale", "1.2")
    assert done.returncode == 0, done.stderr
    changed_ms = int(time.time() * 1000)  # the CLI has sent the control record

    def events_since_change():
        return [e for e in drift_events() if e["at_ms"] >= changed_ms]

    def events_up_to_an_alarm():
        events = events_since_change()
        return events if any(e["severity"] != "none" for e in events) else None

    after = wait_for(events_up_to_an_alarm, 60) or events_since_change()
    alarms = [e for e in after if e["severity"] != "none"]
    assert alarms, after
    # Reported within 3 canary rounds of the change (the first may have begun before it).
    assert after.index(alarms[0]) <= 3
    assert alarms[0]["p_value"] < 1e-4 and alarms[0]["statistic"] > alarms[0]["threshold"]
    samples = scrape(port)
    assert samples['qlane_drift_alarm{backend="aer.noisy"}'] == 1
    assert samples['qlane_drift_statistic{backend="aer.noisy"}'] > 0


def test_a_failing_canary_backend_does_not_stop_the_worker_and_tenants_have_lag(
        broker_address, tmp_path):
    """A drift round whose backend call failed was raised out of Faust's timer and crashed
    the worker (exit 1 within a minute of an outage, then the next leader's); a tenant's job
    topics had no consumer-lag series, so its backlog could fire no alert (red-team run)."""
    settings = session_settings(*broker_address, tag="obsfail", tenants=["acme"])
    asyncio.run(ensure_topics(settings))
    port = free_port()
    log = tmp_path / "worker.log"
    process = start_worker(settings, log, web_port=port, env={
        "QLANE_DRIFT_PERIOD_S": "1", "QLANE_FAULTS": "aer.noisy:failure_rate=1",
        "QLANE_TENANTS": '["acme"]'})
    failed = 'qlane_drift_rounds_total{backend="aer.noisy",severity="failed"}'
    try:
        wait_until_ready(settings, log)
        assert wait_for(lambda: scrape(port).get(failed, 0) >= 3, timeout_s=60), \
            log.read_text()[-3000:]
        assert process.poll() is None, log.read_text()[-3000:]
        jobs = [job_request(circuit=BELL, shots=50)]
        assert {o.state for o in submit_and_wait(settings, jobs, 120).values()} == {"done"}

        def tenant_lag():
            return [name for name in scrape(port)
                    if name.startswith("qlane_consumer_lag{")
                    and f'topic="{settings.topic_prefix}.jobs.acme' in name]

        assert wait_for(tenant_lag, timeout_s=15), "no lag series for the tenant's topics"
        assert process.poll() is None
    finally:
        stop_worker(process)


def closed_by_server(connection: socket.socket, wait_s: float) -> bool:
    connection.settimeout(wait_s)
    try:
        return connection.recv(1024) == b""
    except TimeoutError:
        return False
    except OSError:  # reset
        return True


def test_the_web_port_bounds_its_connections_and_serves_no_table_entries(monitored):
    """20,000 idle connections, each a half-sent request, used up the worker's file
    descriptors: good jobs were dead-lettered as OSError and `/` stopped answering; and
    Faust's `/table` view served any workflow's entry with its error text (a red-team
    run)."""
    settings, port, _, log = monitored
    for path in ("/table/", "/table/workflows/x/", "/router/"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5)
        assert refused.value.code == 404
    before = scrape(port).get("qlane_web_connections_refused_total", 0.0)
    idle = []
    try:
        for _ in range(3 * WEB_MAX_CONNECTIONS):
            connection = socket.create_connection(("127.0.0.1", port), timeout=5)
            connection.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
            idle.append(connection)
        time.sleep(0.5)
        # past the limit, closed as they came (twice the limit at most are held, when
        # they come in one burst); the others until their idle timeout
        closed, _, _ = select.select(idle, [], [], 0.2)  # readable: an EOF or a reset
        held = [c for c in idle if c not in closed]
        assert 0 < len(held) <= 2 * WEB_MAX_CONNECTIONS
        outcome = submit_and_wait(settings, [job_request(circuit=BELL, shots=20)], 120)
        assert {o.state for o in outcome.values()} == {"done"}, log.read_text()[-3000:]
        assert all(closed_by_server(c, WEB_IDLE_TIMEOUT_S + 3) for c in held)
    finally:
        for connection in idle:
            connection.close()
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).status == 200
    refused = scrape(port)["qlane_web_connections_refused_total"] - before
    assert WEB_MAX_CONNECTIONS <= refused <= len(idle) - len(held)
