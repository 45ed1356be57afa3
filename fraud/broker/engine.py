"""Which broker engine runs locally: Apache Kafka where Java 17+ (and Maven, once) are here,
else the noida-db emulator, with one line saying so. ``--engine`` / ``FRAUD_BROKER_ENGINE``
(``kafka``, ``noida`` or ``auto``) overrides; an explicit ``kafka`` that cannot run is an error,
never a silent fallback.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from fraud.broker.kafka import KafkaCluster, unavailable_reason
from fraud.broker.noida import NoidaBroker
from fraud.broker.process import BrokerError, free_port
from fraud.broker.running import BrokerInfo, engine_title

ENGINES = ("auto", "kafka", "noida")
ENGINE_ENV = "FRAUD_BROKER_ENGINE"
Say = Callable[[str], None]


class LocalBroker(Protocol):
    """A broker this process started (either engine)."""

    engine: str
    version: str

    @property
    def bootstrap(self) -> str: ...

    @property
    def pids(self) -> tuple[int, ...]: ...

    def start(self, timeout_s: float = ...) -> BrokerInfo: ...

    def stop(self, timeout_s: float = ...) -> bool: ...


def requested_engine(flag: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The engine asked for: the flag, else ``FRAUD_BROKER_ENGINE``, else ``auto``."""
    env = os.environ if env is None else env
    wanted = (flag or env.get(ENGINE_ENV) or "auto").strip().lower()
    if wanted not in ENGINES:
        raise BrokerError(
            f"unknown broker engine {wanted!r} (from {'--engine' if flag else ENGINE_ENV}); "
            f"choose one of {', '.join(ENGINES)}"
        )
    return wanted


def choose_engine(
    flag: str | None = None, say: Say = print, env: Mapping[str, str] | None = None
) -> str:
    """``kafka`` or ``noida``: ``auto`` takes Kafka where it can run, else says why not and
    takes the emulator."""
    wanted = requested_engine(flag, env)
    if wanted == "noida":
        return "noida"
    reason = unavailable_reason()
    if reason is None:
        return "kafka"
    if wanted == "kafka":
        raise BrokerError(f"Apache Kafka cannot run here: {reason}")
    say(f"Apache Kafka unavailable ({reason}); falling back to the noida-db emulator")
    return "noida"


def local_broker(
    engine: str,
    data_dir: Path,
    port: int | None = None,
    nodes: int = 1,
    say: Say = print,
) -> LocalBroker:
    """An unstarted broker of ``engine`` (``kafka`` or ``noida``) with its data in
    ``data_dir``; ``port`` of its first node (free when None)."""
    if engine == "kafka":
        return KafkaCluster(data_dir, nodes=nodes, port=port, say=say)
    if nodes != 1:
        raise BrokerError("the noida-db emulator runs one node only; use --engine kafka")
    return NoidaBroker(data_dir, port or free_port())


@dataclass(frozen=True)
class BrokerChoice:
    """Where a tool runs: the cluster at the settings' brokers (``external``), or a fresh local
    broker of ``engine`` (``kafka``, ``noida``, None for auto: see ``choose_engine``)."""

    external: bool = False
    engine: str | None = None


LOCAL_BROKER = BrokerChoice()


@dataclass(frozen=True)
class BrokerInUse:
    """The broker a tool runs against: one it started, or the user's cluster."""

    bootstrap: str
    engine: str  # "kafka", "noida" or "external"
    version: str  # "" for an external cluster
    pids: tuple[int, ...] = ()

    def describe(self) -> str:
        if self.engine == "external":
            return f"external cluster at {self.bootstrap}"
        pids = ", ".join(str(p) for p in self.pids)
        return f"{engine_title(self.engine)} {self.version} on {self.bootstrap} (pid {pids})"


@contextlib.contextmanager
def broker_in_use(
    choice: BrokerChoice,
    brokers: str,
    data_dir: Path,
    nodes: int = 1,
    say: Say = print,
) -> Iterator[BrokerInUse]:
    """The cluster at ``brokers`` (bootstrap servers) as it is when ``choice`` is external,
    else a local broker of ``choice.engine`` with its data in ``data_dir``, started on free
    ports and stopped on the way out."""
    if choice.external:
        use = BrokerInUse(brokers, "external", "")
        say(f"broker: {use.describe()}")
        yield use
        return
    broker = local_broker(choose_engine(choice.engine, say), data_dir, nodes=nodes, say=say)
    broker.start()
    use = BrokerInUse(broker.bootstrap, broker.engine, broker.version, broker.pids)
    say(f"broker: {use.describe()}")
    try:
        yield use
    finally:
        clean = broker.stop()
        say("broker stopped" + ("" if clean else " (killed after timeout)"))
