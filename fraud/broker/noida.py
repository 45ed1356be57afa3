"""noida-db, the fallback engine: a one-binary emulator of the Kafka protocol (PyPI noida-db).

For machines without Java. Measured limits (docs/brokers.md): every topic in memory, empty
fetches answered at once, fetch size limits ignored, acknowledged writes lost on SIGKILL.
Nothing in the engine may depend on one of its quirks.
"""

from __future__ import annotations

import os
import subprocess
import time
from importlib.metadata import version as package_version
from importlib.resources import files
from pathlib import Path

from fraud.broker.process import BrokerError, port_open, stop_pids, wait_until_ready
from fraud.broker.running import BrokerInfo, forget, refuse_if_running, write_info

LOG_FILE = "broker.log"


def noida_binary() -> Path:
    """Path of the noida-db executable shipped inside the noida-db wheel."""
    path = Path(str(files("noida_db").joinpath("noida-db")))
    if not path.is_file():
        raise BrokerError(f"noida-db binary not found at {path}; is noida-db installed?")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


class NoidaBroker:
    """One noida-db process speaking Kafka on ``host:port`` with its data in ``data_dir``.

    noida-db writes its data file on SIGTERM; a SIGKILL loses acknowledged writes.
    """

    engine = "noida"

    def __init__(self, data_dir: Path, port: int = 9092, host: str = "127.0.0.1") -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.version = package_version("noida-db")
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pids(self) -> tuple[int, ...]:
        return (self._proc.pid,) if self._proc else ()

    def start(self, timeout_s: float = 30.0) -> BrokerInfo:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        refuse_if_running(self.data_dir)
        if port_open(self.host, self.port):
            raise BrokerError(f"port {self.host}:{self.port} is already in use")
        cmd = [
            str(noida_binary()),
            "start",
            "--data-dir", str(self.data_dir),
            "--host", self.host,
            "--only", "kafka",
            "--kafka-port", str(self.port),
        ]  # fmt: skip
        with (self.data_dir / LOG_FILE).open("ab") as log:
            self._proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        info = BrokerInfo(self.engine, self.version, self.bootstrap, self.pids, self.data_dir)
        write_info(info)
        try:
            self._wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return info

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not port_open(self.host, self.port):
            if self._proc is not None and self._proc.poll() is not None:
                tail = (self.data_dir / LOG_FILE).read_text(errors="replace")[-500:]
                raise BrokerError(f"noida-db exited with {self._proc.returncode}: {tail.strip()}")
            if time.monotonic() > deadline:
                raise BrokerError(f"noida-db did not open {self.bootstrap} in {timeout_s:.0f} s")
            time.sleep(0.02)
        wait_until_ready(self.bootstrap, max(1.0, deadline - time.monotonic()))

    def stop(self, timeout_s: float = 60.0) -> bool:
        """Stop gracefully; True when the broker saved and exited by itself."""
        if self._proc is None:
            return True
        clean = stop_pids([self._proc.pid], timeout_s)
        self._proc.wait()
        self._proc = None
        forget(self.data_dir)
        return clean
