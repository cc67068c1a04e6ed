"""A local Apache Kafka (KRaft, combined broker+controller nodes) from Maven Central jars.

`deploy/kafka/pom.xml` pins the broker; its runtime jars are copied once into a cache folder
(`QLANE_KAFKA_CACHE`, default `~/.cache/qlane/kafka`), one per version. Nodes share a static
controller quorum, keep their data on disk (a temporary folder unless `data_dir` is given) and
run in their own process sessions so that `stop()` leaves nothing behind.

Used by `qlane kafka`, the test suite (tests/conftest.py) and the benchmark.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from streams.brokers.tansu import die_with_parent, free_port

CLUSTER_ID = "cWxhbmUtbG9jYWwta2Fma2E"  # 22 chars of base64: the same for every node
POM = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "pom.xml"
VERSIONS = {"4.1": "kafka-4.1", "3.9": "kafka-3.9"}  # --version -> Maven profile in the POM
DEFAULT_VERSION = "4.1"
READY_LINE = "Kafka Server started"
JVM_OPTIONS = (
    "-Xms128m", "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)


class KafkaStartError(RuntimeError):
    """The local cluster could not be installed or did not become ready."""


def cache_root() -> Path:
    configured = os.environ.get("QLANE_KAFKA_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "qlane" / "kafka"


def java_binary() -> str:
    home = os.environ.get("QLANE_JAVA_HOME") or os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    found = shutil.which("java")
    if not found:
        raise KafkaStartError("no `java` on PATH (Kafka needs Java 17 or newer)")
    return found


def install(version: str = DEFAULT_VERSION) -> Path:
    """The folder of the version's jars, resolved with Maven on first use."""
    if version not in VERSIONS:
        raise KafkaStartError(f"unknown Kafka version {version!r}; known: {sorted(VERSIONS)}")
    libs = cache_root() / version / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    if not POM.exists():
        raise KafkaStartError(f"{POM} is missing: run qlane kafka from a checkout of qlane")
    mvn = shutil.which("mvn")
    if not mvn:
        raise KafkaStartError("Maven (`mvn`) is needed once to fetch the Kafka jars")
    libs.parent.mkdir(parents=True, exist_ok=True)
    # A folder of its own per process: two installs at once (make test in two clones) each
    # fetch, and the first to rename its complete folder into place wins.
    staging = Path(tempfile.mkdtemp(prefix="libs.partial-", dir=libs.parent))
    try:
        result = subprocess.run(
            [mvn, "-q", "-B", "-f", str(POM), f"-P{VERSIONS[version]}",
             "dependency:copy-dependencies", "-DincludeScope=runtime",
             f"-DoutputDirectory={staging}"],
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise KafkaStartError(f"mvn failed to fetch Kafka {version}:\n{result.stdout[-3000:]}")
        (staging / marker.name).touch()
        if not marker.exists():
            shutil.rmtree(libs, ignore_errors=True)
            try:
                staging.rename(libs)
            except OSError:
                if not marker.exists():
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return libs


@dataclass
class Node:
    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class KafkaCluster:
    """`nodes` combined KRaft nodes on 127.0.0.1; a context manager or start()/stop()."""

    nodes_count: int = 1
    version: str = DEFAULT_VERSION
    port: int = 0  # the first node's client port; 0 = any free port
    data_dir: Path | None = None
    extra_properties: dict[str, str] = field(default_factory=dict)
    # Extra listeners, e.g. {"SASL_SSL": (port, "SASL_SSL")}: name -> (port, protocol).
    extra_listeners: dict[str, tuple[int, str]] = field(default_factory=dict)
    jvm_options: tuple[str, ...] = JVM_OPTIONS
    jvm_properties: dict[str, str] = field(default_factory=dict)
    format_extra_args: tuple[str, ...] = ()  # e.g. --add-scram for SASL users
    nodes: list[Node] = field(default_factory=list, init=False)
    _owned_dir: bool = field(default=False, init=False)

    @property
    def bootstrap(self) -> str:
        return ",".join(node.address for node in self.nodes)

    @property
    def replication_factor(self) -> int:
        return min(self.nodes_count, 3)

    @property
    def min_insync_replicas(self) -> int:
        return 2 if self.nodes_count >= 3 else 1

    def _layout(self) -> None:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="qlane-kafka-"))
            self._owned_dir = True
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.nodes = []
        for index in range(self.nodes_count):
            port = self.port + index if self.port else free_port()
            self.nodes.append(Node(
                node_id=index + 1, port=port, controller_port=free_port(),
                data_dir=self.data_dir / f"node-{index + 1}" / "data",
                log_path=self.data_dir / f"node-{index + 1}" / "server.log",
            ))

    def properties(self, node: Node) -> dict[str, str]:
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.nodes)
        listeners = [f"PLAINTEXT://127.0.0.1:{node.port}",
                     f"CONTROLLER://127.0.0.1:{node.controller_port}"]
        advertised = [f"PLAINTEXT://127.0.0.1:{node.port}"]
        protocols = ["CONTROLLER:PLAINTEXT", "PLAINTEXT:PLAINTEXT"]
        for name, (port, protocol) in self.extra_listeners.items():
            # One extra port per node: the given port plus the node's index.
            node_port = port + node.node_id - 1
            listeners.append(f"{name}://127.0.0.1:{node_port}")
            advertised.append(f"{name}://127.0.0.1:{node_port}")
            protocols.append(f"{name}:{protocol}")
        rf = self.replication_factor
        properties = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "controller.quorum.voters": voters,
            "listeners": ",".join(listeners),
            "advertised.listeners": ",".join(advertised),
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": ",".join(protocols),
            "log.dirs": str(node.data_dir),
            "auto.create.topics.enable": "false",
            "group.initial.rebalance.delay.ms": "0",
            "offsets.topic.replication.factor": str(rf),
            "offsets.topic.num.partitions": "3",
            "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(self.min_insync_replicas),
            "transaction.state.log.num.partitions": "3",
            "default.replication.factor": str(rf),
            "min.insync.replicas": str(self.min_insync_replicas),
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "log.cleaner.dedupe.buffer.size": "16777216",
            "group.min.session.timeout.ms": "2000",
        }
        if self.version != "3.9":
            properties["share.coordinator.state.topic.replication.factor"] = str(rf)
            properties["share.coordinator.state.topic.min.isr"] = str(self.min_insync_replicas)
        properties.update(self.extra_properties)
        return properties

    def _write_config(self, node: Node) -> Path:
        folder = node.data_dir.parent
        folder.mkdir(parents=True, exist_ok=True)
        config = folder / "server.properties"
        config.write_text("".join(f"{k}={v}\n" for k, v in self.properties(node).items()))
        if self.version == "3.9":
            (folder / "log4j.properties").write_text(
                "log4j.rootLogger=INFO, o\n"
                "log4j.appender.o=org.apache.log4j.ConsoleAppender\n"
                "log4j.appender.o.layout=org.apache.log4j.PatternLayout\n"
                "log4j.appender.o.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            )
        else:
            (folder / "log4j2.properties").write_text(
                "rootLogger.level=INFO\n"
                "rootLogger.appenderRef.o.ref=O\n"
                "appender.o.type=Console\n"
                "appender.o.name=O\n"
                "appender.o.layout.type=PatternLayout\n"
                "appender.o.layout.pattern=[%d] %p %m (%c)%n\n"
            )
        return config

    def _java(self, libs: Path, node: Node, *arguments: str) -> list[str]:
        folder = node.data_dir.parent
        if self.version == "3.9":
            logging = f"-Dlog4j.configuration=file:{folder / 'log4j.properties'}"
        else:
            logging = f"-Dlog4j2.configurationFile={folder / 'log4j2.properties'}"
        extra = [f"-D{k}={v}" for k, v in self.jvm_properties.items()]
        return [java_binary(), *self.jvm_options, logging, *extra,
                "-cp", f"{libs}/*", *arguments]

    def format_storage(self, libs: Path, node: Node, config: Path,
                       extra_args: tuple[str, ...] = ()) -> None:
        if (node.data_dir / "meta.properties").exists():
            return
        result = subprocess.run(
            self._java(libs, node, "kafka.tools.StorageTool", "format",
                       "-t", CLUSTER_ID, "-c", str(config), "--ignore-formatted", *extra_args),
            capture_output=True, text=True,
        )
        if result.returncode != 0:
            raise KafkaStartError(f"formatting node {node.node_id} failed:\n"
                                  f"{result.stdout[-2000:]}{result.stderr[-2000:]}")

    def start(self, timeout_s: float = 120.0) -> KafkaCluster:
        libs = install(self.version)
        self._layout()
        for node in self.nodes:
            config = self._write_config(node)
            self.format_storage(libs, node, config, self.format_extra_args)
        # From where each log ends now: with a kept --data folder, the last run's ready
        # line made a start "ready in 0.1s" before any node listened (a red-team run).
        offsets = {node.node_id: self._log_offset(node) for node in self.nodes}
        for node in self.nodes:
            self._launch(libs, node)
        try:
            self.wait_ready(timeout_s, offsets=offsets)
        except BaseException:
            self.stop()
            raise
        return self

    def _launch(self, libs: Path, node: Node) -> None:
        config = node.data_dir.parent / "server.properties"
        log = open(node.log_path, "ab")
        node.process = subprocess.Popen(
            self._java(libs, node, "kafka.Kafka", str(config)),
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, preexec_fn=die_with_parent,
        )
        log.close()

    def _log_offset(self, node: Node) -> int:
        return node.log_path.stat().st_size if node.log_path.exists() else 0

    def wait_ready(self, timeout_s: float, offsets: dict[int, int] | None = None) -> None:
        """Until every node launched (of `offsets`' nodes, if given) has logged READY_LINE,
        after its offset in `offsets`."""
        deadline = time.monotonic() + timeout_s
        pending = [node for node in self.nodes if node.process is not None
                   and (offsets is None or node.node_id in offsets)]
        offsets = offsets or {}
        while pending:
            for node in list(pending):
                if node.process.poll() is not None:
                    raise KafkaStartError(
                        f"Kafka node {node.node_id} exited with {node.process.returncode}:\n"
                        f"{self.log_tail(node)}")
                with open(node.log_path, "rb") as log:
                    log.seek(offsets.get(node.node_id, 0))
                    if READY_LINE.encode() in log.read():
                        pending.remove(node)
            if pending and time.monotonic() > deadline:
                raise KafkaStartError(
                    f"Kafka node(s) {[n.node_id for n in pending]} not ready in {timeout_s}s:\n"
                    f"{self.log_tail(pending[0])}")
            time.sleep(0.1)

    def log_tail(self, node: Node, chars: int = 3000) -> str:
        try:
            return node.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # --- failures, for the reliability tests -------------------------------------------
    def kill_node(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[node_id - 1]
        if node.alive:
            os.killpg(node.process.pid, sig)
            node.process.wait(timeout=60)

    def freeze_node(self, node_id: int) -> None:
        """SIGSTOP the node: its connections stay open and nothing answers on them (a node
        swapped out or paused by its hypervisor), unlike a killed node's refused ones."""
        node = self.nodes[node_id - 1]
        if node.alive:
            os.killpg(node.process.pid, signal.SIGSTOP)

    def thaw_node(self, node_id: int) -> None:
        node = self.nodes[node_id - 1]
        if node.alive:
            os.killpg(node.process.pid, signal.SIGCONT)

    def restart_node(self, *node_ids: int, timeout_s: float = 120.0) -> None:
        """Start these killed nodes again, together; return once each one is ready (the
        nodes still down are not waited for)."""
        offsets = {}
        for node_id in node_ids:
            node = self.nodes[node_id - 1]
            if not node.alive:
                offsets[node_id] = self._log_offset(node)
                self._launch(install(self.version), node)
        if offsets:
            self.wait_ready(timeout_s, offsets=offsets)

    # --- stop --------------------------------------------------------------------------
    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM every node (a controlled shutdown), SIGKILL what outlives the timeout."""
        for node in self.nodes:
            if node.alive:
                try:
                    os.killpg(node.process.pid, signal.SIGCONT)  # a frozen node too
                    os.killpg(node.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(node.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                node.process.wait()
        if self._owned_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """`python -m streams.brokers.kafka_local [VERSION ...]`: fetch the jars (make install runs
    it)."""
    import sys

    for version in (argv if argv is not None else sys.argv[1:]) or [DEFAULT_VERSION]:
        print(f"Apache Kafka {version}: {install(version)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
