"""The wire contract from another language, on Apache Kafka.

tests/interop/java is a Java program that knows qlane only through the published contract:
the schemas/*.avsc files, Avro single-object encoding as Apache Avro's Java reference
implementation writes it (BinaryMessageEncoder/Decoder) and kafka-clients. The test builds it
with Maven (dependencies cached in ~/.m2), and it submits a Bell job to a qlane worker on the
session's 1-node Apache Kafka and reads the JobResult back.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from schemas.codec import codec
from streams.kafka.topics import ensure_topics
from tests.support import session_settings, start_worker, stop_worker, wait_until_ready

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ROOT / "tests" / "interop" / "java"
MAIN = "io.qlane.interop.SubmitAndWait"


@pytest.fixture(scope="module")
def java_client(tmp_path_factory) -> list[str]:
    """Build the Java client; the command line that runs it."""
    mvn, java = shutil.which("mvn"), shutil.which("java")
    assert mvn and java, "the Java interop test needs `mvn` and `java` (JDK 17)"
    build = tmp_path_factory.mktemp("java-build")
    result = subprocess.run(
        [mvn, "-q", "-B", "-f", str(PROJECT / "pom.xml"), f"-Dinterop.build={build}",
         "package", "dependency:copy-dependencies", "-DincludeScope=runtime",
         f"-DoutputDirectory={build / 'libs'}"],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, f"mvn failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return [java, "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp",
            f"{build / 'classes'}:{build / 'libs'}/*", MAIN]


@pytest.mark.parametrize("broker_address", ["kafka"], indirect=True)
def test_java_client_submits_and_reads_the_result(broker_address, java_client, tmp_path):
    settings = session_settings(*broker_address, tag="java")
    asyncio.run(ensure_topics(settings))
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log)
    try:
        wait_until_ready(settings, log)
        workflow_id = f"java-{uuid.uuid4().hex[:8]}"
        run = subprocess.run(
            [*java_client, settings.broker, str(ROOT / "schemas"), settings.topic_prefix,
             workflow_id, str(ROOT / "examples" / "bell.qasm"), "500", "120"],
            capture_output=True, text=True, timeout=240,
        )
    finally:
        stop_worker(worker)
    output = run.stdout
    worker_log = log.read_text()[-3000:]
    assert run.returncode == 0, f"{output}\n{run.stderr[-3000:]}\nworker:\n{worker_log}"
    lines = dict(line.split(" ", 1) for line in output.splitlines() if " " in line)
    # Java's canonical form and fingerprint equal the ones the Python codec frames with.
    assert lines["fingerprint"] == f"JobRequest {codec('JobRequest').fingerprint.hex()}"
    assert lines["status"] == "succeeded"
    assert lines["mode"] == "quantum"
    assert lines["shots_used"] == "500"
    counts = lines["counts"].strip("{}")
    outcomes = dict(item.split("=") for item in counts.split(", "))
    assert sum(int(n) for n in outcomes.values()) == 500
    assert set(outcomes) <= {"00", "11"}  # a Bell pair on the ideal simulator
