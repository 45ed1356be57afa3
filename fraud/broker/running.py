"""The record of a broker started in the background: which engine, where, which processes.

``fraud broker start`` writes it into the broker's data directory, so ``status`` and ``stop``
(other processes) find the broker again.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from fraud.broker.process import BrokerError, pid_alive, stop_pids

PID_FILE = "broker.json"


@dataclass(frozen=True)
class BrokerInfo:
    engine: str  # "kafka" or "noida"
    version: str
    bootstrap: str
    pids: tuple[int, ...]  # one per node
    data_dir: Path

    def describe(self) -> str:
        nodes = "node" if len(self.pids) == 1 else "nodes"
        pids = ", ".join(str(p) for p in self.pids)
        return (
            f"{engine_title(self.engine)} {self.version}, {len(self.pids)} {nodes} "
            f"(pid {pids}), bootstrap {self.bootstrap}, data dir {self.data_dir}"
        )


def engine_title(engine: str) -> str:
    return {"kafka": "Apache Kafka", "noida": "noida-db (emulator)"}.get(engine, engine)


def write_info(info: BrokerInfo) -> None:
    raw = {
        "engine": info.engine,
        "version": info.version,
        "bootstrap": info.bootstrap,
        "pids": list(info.pids),
    }
    (info.data_dir / PID_FILE).write_text(json.dumps(raw))


def forget(data_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (data_dir / PID_FILE).unlink()


def read_info(data_dir: Path) -> BrokerInfo | None:
    """The broker recorded in ``data_dir``, if one of its processes is still alive."""
    try:
        raw = json.loads((data_dir / PID_FILE).read_text())
        info = BrokerInfo(
            engine=str(raw["engine"]),
            version=str(raw["version"]),
            bootstrap=str(raw["bootstrap"]),
            pids=tuple(int(p) for p in raw["pids"]),
            data_dir=data_dir,
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if any(pid_alive(p) for p in info.pids) else None


def refuse_if_running(data_dir: Path) -> None:
    running = read_info(data_dir)
    if running is not None:
        raise BrokerError(
            f"a broker (pid {', '.join(map(str, running.pids))}) already runs on "
            f"{running.bootstrap} with data dir {data_dir}; stop it with 'fraud broker stop'"
        )


def stop_recorded(info: BrokerInfo, timeout_s: float = 60.0) -> bool:
    """Stop every process of a recorded broker (SIGTERM, then wait); True when all exited by
    themselves."""
    clean = stop_pids(info.pids, timeout_s)
    forget(info.data_dir)
    return clean
