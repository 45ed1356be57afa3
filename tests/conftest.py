"""Shared fixtures: one local broker per session (or a user's cluster via KAFKA_BOOTSTRAP).

The folder decides the kind of a test: everything under ``tests/integration/`` is marked
``integration`` here; a test under ``tests/unit/`` that asks for the broker is a collection error.
The numba kernels are compiled (or loaded from their cache) once, before the first test, so no
test's deadline pays for compilation.

The engine is Apache Kafka where Java 17+ runs (installed from Maven Central on first use),
else the noida-db emulator; ``FRAUD_BROKER_ENGINE=kafka|noida`` forces one (``.ci/run`` forces
Kafka, so a broken install fails CI instead of falling back). The header of the test report
says which engine runs.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraud.broker import choose_engine, local_broker
from fraud.broker.running import engine_title
from fraud.settings import Settings

INTEGRATION = Path(__file__).parent / "integration"
BROKER_FIXTURES = frozenset({"brokers", "broker_engine"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    misplaced: list[str] = []
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)
        elif BROKER_FIXTURES & set(getattr(item, "fixturenames", ())):
            misplaced.append(item.nodeid)
    if misplaced:
        raise pytest.UsageError(
            "unit tests that use the broker (move them to tests/integration/): "
            + ", ".join(misplaced)
        )


@pytest.fixture(scope="session", autouse=True)
def _kernels_compiled() -> None:
    """Compile or load every numba kernel before the first test."""
    from fraud.scoring.warmup import warmup

    warmup()


@functools.cache
def _engine() -> tuple[str, tuple[str, ...]]:
    """The session's engine, chosen once, and the fallback line if there was one."""
    notes: list[str] = []
    return choose_engine(say=notes.append), tuple(notes)


def pytest_report_header(config: pytest.Config) -> list[str]:
    if os.environ.get("KAFKA_BOOTSTRAP"):
        return [f"broker: external cluster at {os.environ['KAFKA_BOOTSTRAP']}"]
    engine, notes = _engine()
    return [*notes, f"broker: {engine_title(engine)} (started once for the session)"]


@pytest.fixture(scope="session")
def broker_engine() -> str:
    """``kafka`` or ``noida``: the engine of the session's broker (``external`` for a cluster
    given by KAFKA_BOOTSTRAP)."""
    return "external" if os.environ.get("KAFKA_BOOTSTRAP") else _engine()[0]


@pytest.fixture(scope="session")
def brokers(tmp_path_factory: pytest.TempPathFactory, broker_engine: str) -> Iterator[str]:
    """Bootstrap servers: KAFKA_BOOTSTRAP when set (a real cluster), else a local broker."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = local_broker(broker_engine, tmp_path_factory.mktemp("broker"), say=print)
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        assert broker.stop(), "the session's broker had to be killed"


@pytest.fixture
def settings(brokers: str, tmp_path: Path) -> Settings:
    """Settings with topics and consumer group of this test only."""
    tag = uuid.uuid4().hex[:8]
    return Settings(
        brokers=brokers,
        topic_prefix=f"t{tag}-",
        app_id=f"fraud-test-{tag}",
        data_dir=tmp_path / "state",
        partitions=4,
        web_port=None,
    )
