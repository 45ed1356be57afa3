"""Shared fixtures: one embedded broker per session (or a real cluster via KAFKA_BOOTSTRAP)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fraud.broker import EmbeddedBroker, free_port
from fraud.settings import Settings


@pytest.fixture(scope="session")
def brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers: KAFKA_BOOTSTRAP when set (a real cluster), else an embedded broker."""
    external = os.environ.get("KAFKA_BOOTSTRAP")
    if external:
        yield external
        return
    broker = EmbeddedBroker(tmp_path_factory.mktemp("broker"), free_port())
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        assert broker.stop(), "the embedded broker had to be killed"


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
