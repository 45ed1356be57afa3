"""Apache Kafka, the reference engine: fetched from Maven Central, run as local KRaft nodes.

``install`` runs ``mvn -q dependency:copy-dependencies`` on the checked-in ``pom.xml`` (the one
pin of the Kafka version) into ``<cache>/kafka-<version>/libs``, once: the cache is
``FRAUD_CACHE_DIR``, else ``$XDG_CACHE_HOME/fraud``, else ``~/.cache/fraud``.

``KafkaCluster`` runs 1 or more combined broker+controller nodes on loopback, each a
``kafka.Kafka`` JVM with a bounded heap, its own storage directory (formatted once with
``kafka.tools.StorageTool``), ``server.properties`` and log4j2 configuration. One node uses a
standalone dynamic quorum; several use a static voter set. Internal topics are replicated to
min(3, nodes) nodes, with a minimum in-sync replica count of 2 from 3 nodes on, so a 3-node
cluster keeps accepting acks=all writes with one node down. Each node can be killed by PID.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from fraud.broker.process import (
    BrokerError,
    free_port,
    port_open,
    stop_pids,
    wait_until_ready,
)
from fraud.broker.running import BrokerInfo, forget, refuse_if_running, write_info

MIN_JAVA = 17
NO_JAVA = "java not found on PATH (Kafka 4 needs Java 17 or later)"
LAYOUT_FILE = "cluster.json"
Say = Callable[[str], None]


def pom_path() -> Path:
    return Path(str(files("fraud.broker").joinpath("pom.xml")))


def kafka_version() -> str:
    """The Kafka version pinned in pom.xml."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom_path().read_text())
    if found is None:
        raise BrokerError(f"{pom_path()} pins no <kafka.version>")
    return found.group(1).strip()


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get("FRAUD_CACHE_DIR"):
        return Path(env["FRAUD_CACHE_DIR"])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "fraud"
    return Path.home() / ".cache" / "fraud"


def install_dir(version: str | None = None) -> Path:
    return cache_root() / f"kafka-{version or kafka_version()}"


def installed_libs(version: str | None = None) -> Path | None:
    """The directory of Kafka's jars when a complete install is cached."""
    home = install_dir(version)
    return home / "libs" if (home / ".complete").is_file() else None


def find_java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").is_file():
        return str(Path(home) / "bin" / "java")
    return shutil.which("java")


def java_major(java: str) -> int:
    """The major version of ``java`` (``java -version`` prints it on stderr)."""
    out = subprocess.run(
        [java, "-version"], capture_output=True, text=True, timeout=30, check=False
    )
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if found is None:
        return 0
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major  # "1.8.0" is Java 8


def unavailable_reason() -> str | None:
    """Why Apache Kafka cannot run here (None when it can): Java >= 17 is needed, and Maven
    until Kafka's jars are cached."""
    java = find_java()
    if java is None:
        return NO_JAVA
    major = java_major(java)
    if major < MIN_JAVA:
        return f"{java} is Java {major}; Kafka 4 needs Java {MIN_JAVA} or later"
    if installed_libs() is None and shutil.which("mvn") is None:
        return "mvn not found on PATH (needed once, to fetch Kafka from Maven Central)"
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install(say: Say = print) -> Path:
    """Fetch Kafka's jars once (reused afterwards); returns their directory."""
    version = kafka_version()
    libs = installed_libs(version)
    if libs is not None:
        return libs
    reason = unavailable_reason()
    if reason is not None:
        raise BrokerError(f"cannot install Apache Kafka {version}: {reason}")
    home = install_dir(version)
    with _locked(home.with_name(home.name + ".lock")):
        libs = installed_libs(version)
        if libs is not None:  # another process installed it while we waited
            return libs
        say(f"installing Apache Kafka {version} from Maven Central into {home} (once) ...")
        started = time.monotonic()
        staging = home.with_name(f"{home.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        shutil.copyfile(pom_path(), staging / "pom.xml")
        cmd = [
            str(shutil.which("mvn")), "-q", "-B", "-f", str(staging / "pom.xml"),
            "dependency:copy-dependencies", f"-DoutputDirectory={staging / 'libs'}",
            "-DincludeScope=runtime",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
        if done.returncode != 0:
            lines = [ln for ln in (done.stdout + done.stderr).splitlines() if "ERROR" in ln]
            detail = lines[0] if lines else f"mvn exited with {done.returncode}"
            shutil.rmtree(staging, ignore_errors=True)
            raise BrokerError(f"mvn could not fetch Apache Kafka {version}: {detail.strip()}")
        (staging / ".complete").write_text(version)
        shutil.rmtree(home, ignore_errors=True)
        staging.rename(home)
        say(f"installed Apache Kafka {version} in {time.monotonic() - started:.0f} s")
    return home / "libs"


def new_cluster_id() -> str:
    """A random Kafka Uuid in its base64 form (never starting with '-', as Kafka's own)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


@dataclass(frozen=True)
class Node:
    node_id: int
    port: int
    controller_port: int


@dataclass(frozen=True)
class Layout:
    """What must stay the same across restarts of one cluster's data directory."""

    cluster_id: str
    nodes: tuple[Node, ...]

    @classmethod
    def load(cls, path: Path) -> Layout | None:
        try:
            raw = json.loads(path.read_text())
            return cls(
                str(raw["cluster_id"]),
                tuple(Node(int(n["id"]), int(n["port"]), int(n["controller_port"]))
                      for n in raw["nodes"]),
            )  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def save(self, path: Path) -> None:
        nodes = [
            {"id": n.node_id, "port": n.port, "controller_port": n.controller_port}
            for n in self.nodes
        ]
        path.write_text(json.dumps({"cluster_id": self.cluster_id, "nodes": nodes}, indent=1))


def dev_properties(nodes: int) -> dict[str, str]:
    """Broker settings of a local cluster of ``nodes`` nodes (replication fitted to its size)."""
    replicas = min(3, nodes)
    min_isr = 2 if nodes >= 3 else 1
    return {
        "num.partitions": "1",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(replicas),
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "share.coordinator.state.topic.replication.factor": str(replicas),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        # a consumer group of one starts at once (tests, demo) instead of after 3 s
        "group.initial.rebalance.delay.ms": "0",
        # retention is enforced within seconds, so a test can watch it act
        "log.retention.check.interval.ms": "2000",
    }


LOG4J2 = """\
status = warn
appender.server.type = RollingFile
appender.server.name = SERVER
appender.server.fileName = {log}
appender.server.filePattern = {log}.%i
appender.server.layout.type = PatternLayout
appender.server.layout.pattern = [%d] %p %m (%c)%n
appender.server.policies.type = Policies
appender.server.policies.size.type = SizeBasedTriggeringPolicy
appender.server.policies.size.size = 50MB
appender.server.strategy.type = DefaultRolloverStrategy
appender.server.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.server.ref = SERVER
"""


class KafkaCluster:
    """``nodes`` combined KRaft nodes on ``host``, data under ``data_dir``.

    ``port`` is node 1's Kafka port (others and the controller ports are picked free and kept
    in ``cluster.json`` for restarts).
    """

    engine = "kafka"

    def __init__(
        self,
        data_dir: Path,
        nodes: int = 1,
        port: int | None = None,
        host: str = "127.0.0.1",
        say: Say = print,
    ) -> None:
        if nodes < 1:
            raise BrokerError("a Kafka cluster needs at least 1 node")
        self.data_dir = Path(data_dir)
        self.nodes = nodes
        self.host = host
        self.port = port
        self.heap_mb = 1024 if nodes == 1 else 512
        self.say = say
        self.version = kafka_version()
        self.layout: Layout | None = None
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def bootstrap(self) -> str:
        if self.layout is None:
            raise BrokerError("the cluster is not started")
        return ",".join(f"{self.host}:{n.port}" for n in self.layout.nodes)

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in self._procs.values())

    def node_dir(self, node_id: int) -> Path:
        return self.data_dir / f"node-{node_id}"

    def start(self, timeout_s: float = 120.0) -> BrokerInfo:
        libs = install(self.say)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        refuse_if_running(self.data_dir)
        self.layout = self._layout()
        for node in self.layout.nodes:
            for port in (node.port, node.controller_port):
                if port_open(self.host, port):
                    raise BrokerError(f"port {self.host}:{port} is already in use")
            self._write_config(node)
        self._format(libs)
        try:
            for node in self.layout.nodes:
                self.start_node(node.node_id, libs)
            info = BrokerInfo(self.engine, self.version, self.bootstrap, self.pids, self.data_dir)
            write_info(info)
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return info

    def _layout(self) -> Layout:
        path = self.data_dir / LAYOUT_FILE
        layout = Layout.load(path)
        if layout is not None:
            if len(layout.nodes) != self.nodes:
                raise BrokerError(
                    f"{self.data_dir} holds a {len(layout.nodes)}-node cluster, not "
                    f"{self.nodes}; use another --data-dir"
                )
            if self.port is not None and layout.nodes[0].port != self.port:
                raise BrokerError(
                    f"{self.data_dir} holds a cluster on port {layout.nodes[0].port}, "
                    f"not {self.port}; use that port or another --data-dir"
                )
            return layout
        ports = [self.port or free_port(self.host)]
        while len(ports) < 2 * self.nodes:
            candidate = free_port(self.host)
            if candidate not in ports:
                ports.append(candidate)
        nodes = tuple(Node(i + 1, ports[i], ports[self.nodes + i]) for i in range(self.nodes))
        layout = Layout(new_cluster_id(), nodes)
        layout.save(path)
        return layout

    def _server_properties(self, node: Node) -> dict[str, str]:
        assert self.layout is not None
        props = {
            "process.roles": "broker,controller",
            "node.id": str(node.node_id),
            "listeners": (
                f"PLAINTEXT://{self.host}:{node.port},CONTROLLER://{self.host}:"
                f"{node.controller_port}"
            ),
            "advertised.listeners": f"PLAINTEXT://{self.host}:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.node_dir(node.node_id) / "data"),
        }
        if self.nodes == 1:
            props["controller.quorum.bootstrap.servers"] = f"{self.host}:{node.controller_port}"
        else:
            props["controller.quorum.voters"] = ",".join(
                f"{n.node_id}@{self.host}:{n.controller_port}" for n in self.layout.nodes
            )
        props.update(dev_properties(self.nodes))
        return props

    def _write_config(self, node: Node) -> None:
        home = self.node_dir(node.node_id)
        home.mkdir(parents=True, exist_ok=True)
        lines = [f"{k}={v}" for k, v in self._server_properties(node).items()]
        (home / "server.properties").write_text("\n".join(lines) + "\n")
        (home / "log4j2.properties").write_text(LOG4J2.format(log=home / "server.log"))

    def _java(self, libs: Path, *args: str, heap_mb: int = 256) -> list[str]:
        java = find_java()
        if java is None:
            raise BrokerError(NO_JAVA)
        return [java, f"-Xmx{heap_mb}m", "-cp", str(libs / "*"), *args]

    def _format(self, libs: Path) -> None:
        """Format each node's storage once (in parallel: each is a JVM start)."""
        assert self.layout is not None
        running: list[tuple[Node, subprocess.Popen[str]]] = []
        for node in self.layout.nodes:
            home = self.node_dir(node.node_id)
            if (home / "data" / "meta.properties").is_file():
                continue
            cmd = self._java(
                libs, "kafka.tools.StorageTool", "format",
                "-t", self.layout.cluster_id, "-c", str(home / "server.properties"),
                *(["--standalone"] if self.nodes == 1 else []),
            )  # fmt: skip
            running.append(
                (node, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True))
            )  # fmt: skip
        for node, proc in running:
            out, _ = proc.communicate(timeout=120)
            if proc.returncode != 0:
                tail = out.strip().splitlines()[-1:] or ["no output"]
                raise BrokerError(f"formatting Kafka node {node.node_id} failed: {tail[0]}")

    def start_node(self, node_id: int, libs: Path | None = None) -> int:
        """Start one node (again, after a kill); returns its PID."""
        libs = libs or install(self.say)
        home = self.node_dir(node_id)
        cmd = self._java(
            libs,
            "-Xms256m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
            "kafka.Kafka", str(home / "server.properties"),
            heap_mb=self.heap_mb,
        )  # fmt: skip
        with (home / "console.log").open("ab") as console:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=console, stderr=console,
                start_new_session=True,
            )  # fmt: skip
        self._procs[node_id] = proc
        return proc.pid

    def _wait_ready(self, timeout_s: float) -> None:
        assert self.layout is not None
        deadline = time.monotonic() + timeout_s
        for node in self.layout.nodes:
            while not port_open(self.host, node.port):
                self._check_alive()
                if time.monotonic() > deadline:
                    raise BrokerError(
                        f"Kafka node {node.node_id} did not open {self.host}:{node.port} in "
                        f"{timeout_s:.0f} s (log: {self.node_dir(node.node_id) / 'server.log'})"
                    )
                time.sleep(0.05)
        wait_until_ready(self.bootstrap, max(1.0, deadline - time.monotonic()), self.nodes)

    def _check_alive(self) -> None:
        for node_id, proc in self._procs.items():
            if proc.poll() is not None:
                log = self.node_dir(node_id) / "server.log"
                errors = [
                    ln for ln in log.read_text(errors="replace").splitlines() if " ERROR " in ln
                ] if log.is_file() else []  # fmt: skip
                detail = errors[-1] if errors else f"see {log}"
                raise BrokerError(
                    f"Kafka node {node_id} exited with {proc.returncode}: {detail[:300]}"
                )

    def kill(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to one node and reap it (a fault test's broker failure)."""
        proc = self._procs.pop(node_id)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        proc.wait()

    def stop(self, timeout_s: float = 60.0) -> bool:
        """SIGTERM every node at once and wait (SIGKILL after ``timeout_s``); True when every
        node exited by itself."""
        clean = stop_pids(self.pids, timeout_s)
        for proc in self._procs.values():
            proc.wait()
        self._procs.clear()
        forget(self.data_dir)
        return clean
