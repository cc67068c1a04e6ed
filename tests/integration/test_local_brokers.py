"""`qlane kafka` and `qlane broker` as a user runs them: ready, usable, gone after SIGTERM."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from streams.brokers.tansu import free_port


def child_pids(parent: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_command(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def read_until(process: subprocess.Popen, pattern: str, timeout_s: float) -> re.Match:
    deadline = time.monotonic() + timeout_s
    seen = []
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    process.kill()
    raise AssertionError(f"no {pattern!r} in the output:\n{''.join(seen)}")


async def broker_ids(bootstrap: str) -> list[int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        cluster = await admin.describe_cluster()
        return sorted(broker["node_id"] for broker in cluster["brokers"])
    finally:
        await admin.close()


@pytest.mark.parametrize("nodes", [1, 3])
def test_qlane_kafka_serves_then_sigterm_stops_every_jvm(nodes):
    process = start_command("kafka", "--nodes", str(nodes), "--port", "0")
    try:
        bootstrap = read_until(process, r"bootstrap servers: (\S+)", 180).group(1)
        assert len(bootstrap.split(",")) == nodes
        assert asyncio.run(broker_ids(bootstrap)) == list(range(1, nodes + 1))
        jvms = child_pids(process.pid)
        assert len(jvms) == nodes
        if nodes == 3:  # one node lost: the other two go on (they all stopped with it)
            lost = min(jvms)
            os.kill(lost, signal.SIGKILL)
            read_until(process, r"Kafka node \d exited .*2 of 3 left", 30)
            assert process.poll() is None
            assert {pid for pid in jvms if alive(pid)} == jvms - {lost}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        assert not [pid for pid in jvms if alive(pid)]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_kept_data_folder_is_ready_only_when_the_node_answers(tmp_path):
    """Started again on a kept --data folder, the cluster read the last run's ready line and
    said "ready in 0.1s" while nothing listened yet (a red-team run)."""
    from streams.brokers.kafka_local import KafkaCluster

    KafkaCluster(nodes_count=1, data_dir=tmp_path).start().stop()
    again = KafkaCluster(nodes_count=1, data_dir=tmp_path).start()
    try:
        assert asyncio.run(broker_ids(again.bootstrap)) == [1]  # at once, no retry
    finally:
        again.stop()


def test_qlane_broker_sigterm_stops_tansu_and_frees_the_port():
    port = free_port()
    process = start_command("broker", "--port", str(port))
    try:
        read_until(process, r"listening on", 30)
        children = child_pids(process.pid)
        assert children
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert not [pid for pid in children if alive(pid)]
        import socket

        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, "a listener was left behind"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
