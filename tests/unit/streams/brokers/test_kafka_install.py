"""Fetching the Kafka jars: two installs at once (two clones' `make test`) both succeed."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from streams.brokers import kafka_local

FAKE_MVN = """#!/bin/sh
# Stands in for Maven: writes one jar into -DoutputDirectory, slowly enough to overlap.
for arg in "$@"; do
  case "$arg" in -DoutputDirectory=*) out="${arg#-DoutputDirectory=}" ;; esac
done
mkdir -p "$out"
sleep 0.3
echo jar > "$out/kafka.jar"
"""


@pytest.fixture
def fake_maven(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mvn = bin_dir / "mvn"
    mvn.write_text(FAKE_MVN)
    mvn.chmod(mvn.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    cache = tmp_path / "cache"
    monkeypatch.setenv("QLANE_KAFKA_CACHE", str(cache))
    return cache


def test_concurrent_installs_both_return_the_complete_folder(fake_maven: Path) -> None:
    results: list[Path] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(kafka_local.install("4.1"))
        except BaseException as error:  # noqa: BLE001 - the test reports any failure
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    libs = fake_maven / "4.1" / "libs"
    assert results == [libs] * 3
    assert (libs / ".complete").exists()
    assert (libs / "kafka.jar").read_text() == "jar\n"
    assert sorted(p.name for p in libs.parent.iterdir()) == ["libs"]


def test_a_failed_fetch_leaves_no_partial_folder(fake_maven: Path, tmp_path: Path) -> None:
    (tmp_path / "bin" / "mvn").write_text("#!/bin/sh\necho no network\nexit 1\n")
    with pytest.raises(kafka_local.KafkaStartError, match="no network"):
        kafka_local.install("4.1")
    assert list((fake_maven / "4.1").iterdir()) == []
