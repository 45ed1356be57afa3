"""The engine's topics, created the same way on a local broker and on a user's cluster."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from confluent_kafka import KafkaException
from confluent_kafka.admin import (  # type: ignore[attr-defined]
    AdminClient,
    NewTopic,
)

from fraud.broker.process import BrokerError
from fraud.kafka_config import client_config
from fraud.settings import Settings


def admin_client(brokers: str) -> AdminClient:
    return AdminClient(client_config(brokers))


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str]


def topic_config(settings: Settings, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Configuration of a topic the engine creates: retention and the minimum in-sync
    replicas from ``settings``, then ``extra`` (``{"cleanup.policy": "compact"}``, say)."""
    config = {
        "retention.ms": str(settings.retention_ms),
        "min.insync.replicas": str(settings.min_insync_replicas),
    }
    config.update(extra or {})
    return config


def topic_specs(settings: Settings) -> list[TopicSpec]:
    """The topics the engine needs. Inputs get the partition count of the state tables."""
    names = settings.topic_names
    config = topic_config(settings)
    n = settings.partitions
    return [
        TopicSpec(names.transactions, n, config),
        TopicSpec(names.labels, n, config),
        TopicSpec(names.decisions, n, config),
        TopicSpec(names.alerts, n, config),
        TopicSpec(names.dead_letters, n, config),
    ]


def create_topics(
    admin: AdminClient, settings: Settings, specs: Sequence[TopicSpec], timeout_s: float = 10.0
) -> list[str]:
    """Create ``specs`` with the settings' replication factor; an existing topic is not an
    error. Returns the names created, once every partition of each has a leader (Kafka
    answers the creation before its brokers know the topic: a client using it at once would
    meet UNKNOWN_TOPIC_OR_PART or NOT_LEADER errors)."""
    if not specs:
        return []
    futures = admin.create_topics(
        [NewTopic(s.name, s.partitions, settings.replication_factor, config=s.config)
         for s in specs],
        operation_timeout=timeout_s,
    )  # fmt: skip
    created = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"cannot create topic {name!r}: {exc}") from None
    wait_for_leaders(admin, created, timeout_s)
    return created


def wait_for_leaders(admin: AdminClient, topics: Sequence[str], timeout_s: float) -> None:
    """Wait until the cluster's metadata gives every partition of ``topics`` a leader."""
    deadline = time.monotonic() + timeout_s
    waiting = set(topics)
    while waiting:
        meta = admin.list_topics(timeout=timeout_s).topics
        waiting = {
            name for name in waiting
            if name not in meta or meta[name].error is not None or not meta[name].partitions
            or any(p.leader < 0 for p in meta[name].partitions.values())
        }  # fmt: skip
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise BrokerError(f"topics without a leader after {timeout_s:.0f} s: {sorted(waiting)}")
        time.sleep(0.05)


def ensure_topics(
    settings: Settings, extra: Sequence[TopicSpec] = (), timeout_s: float = 10.0
) -> list[str]:
    """Create missing topics; refuse input topics whose partition count differs from the tables'.

    ``extra`` adds topics of other components (a sink's retry and dead-letter topics).
    Returns the names created. Faust does not create its input topics, and an auto-created
    1-partition topic would crash the agents with PartitionsMismatch, hence this step.
    """
    admin = admin_client(settings.brokers)
    try:
        existing = admin.list_topics(timeout=timeout_s).topics
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.brokers}: {exc}") from None
    names = settings.topic_names
    must_match = {names.transactions, names.labels}
    wanted = [*topic_specs(settings), *extra]
    for spec in wanted:
        if spec.name in existing and spec.name in must_match:
            have = len(existing[spec.name].partitions)
            if have != spec.partitions:
                raise BrokerError(
                    f"topic {spec.name!r} has {have} partitions but the worker's tables use "
                    f"{spec.partitions}; recreate it or run with --partitions {have}"
                )
    missing = [s for s in wanted if s.name not in existing]
    return create_topics(admin, settings, missing, timeout_s)
