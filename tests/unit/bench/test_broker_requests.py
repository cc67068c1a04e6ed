"""bench/broker_requests.py: the broker's request metrics, per job, between two readings."""

from bench.broker_requests import jmx_properties, parse, per_job

BEFORE = """RequestsPerSec Produce@9 100
RequestsPerSec Produce@11 50
RequestsPerSec Fetch@16 30
LocalTimeMs Produce 150 0.5
LocalTimeMs Fetch 30 0.2
TotalTimeMs Fetch 30 100.0
ResponseSendTimeMs Fetch 30 0.1
"""
AFTER = """RequestsPerSec Produce@9 300
RequestsPerSec Produce@11 50
RequestsPerSec Fetch@16 40
RequestsPerSec Heartbeat@4 7
LocalTimeMs Produce 350 0.7
LocalTimeMs Fetch 40 0.2
TotalTimeMs Fetch 40 400.0
ResponseSendTimeMs Fetch 40 0.1
"""


def test_versions_of_a_request_are_added_together_and_means_become_totals() -> None:
    reading = parse(BEFORE)
    assert reading[("RequestsPerSec", "Produce")] == (150.0, 0.0)
    assert reading[("LocalTimeMs", "Produce")] == (150.0, 75.0)


def test_requests_and_broker_time_per_job_are_the_differences_over_the_jobs() -> None:
    figures = per_job(parse(BEFORE), parse(AFTER), jobs=100)
    assert list(figures) == ["Produce", "Fetch", "Heartbeat"]  # by requests per job
    assert figures["Produce"]["per_job"] == 2.0
    assert round(figures["Produce"]["local_ms_per_job"], 9) == round((350 * 0.7 - 75) / 100, 9)
    assert figures["Fetch"]["per_job"] == 0.1
    assert round(figures["Fetch"]["total_ms_per_job"], 9) == round((16000 - 3000) / 100, 9)
    assert figures["Heartbeat"]["local_ms_per_job"] == 0.0


def test_a_request_type_with_no_new_requests_is_left_out() -> None:
    assert per_job(parse(AFTER), parse(AFTER), jobs=10) == {}


def test_the_jmx_port_is_opened_on_localhost_only_for_the_probe() -> None:
    properties = jmx_properties(12345)
    assert properties["com.sun.management.jmxremote.port"] == "12345"
    assert properties["java.rmi.server.hostname"] == "127.0.0.1"
