"""One frozen settings object, built at the edge (CLI flags, environment) and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

DEFAULT_BROKERS = "127.0.0.1:9092"
# fraud.contracts.units.HOUR_MS and DAY_MS, which this base module may not import (a test
# checks that they agree).
_HOUR_MS = 3_600_000
_DAY_MS = 24 * _HOUR_MS
EXACTLY_ONCE = "exactly_once"
AT_LEAST_ONCE = "at_least_once"
GUARANTEES = (EXACTLY_ONCE, AT_LEAST_ONCE)


@dataclass(frozen=True)
class Topics:
    """Topic names; a prefix lets several deployments share one cluster."""

    transactions: str = "transactions"
    decisions: str = "decisions"
    alerts: str = "alerts"
    labels: str = "labels"
    dead_letters: str = "transactions-dlq"

    def prefixed(self, prefix: str) -> Topics:
        if not prefix:
            return self
        return Topics(**{f.name: prefix + getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class Settings:
    """Everything a worker, a tool or a test needs to know, in one place.

    Environment fallbacks (used by the CLI and the Dockerfile): KAFKA_BOOTSTRAP,
    FRAUD_PARTITIONS, FRAUD_DATA_DIR, FRAUD_APP_ID, FRAUD_TOPIC_PREFIX,
    FRAUD_REPLICATION_FACTOR, FRAUD_MIN_INSYNC_REPLICAS, FRAUD_LABEL_WAIT_MS,
    FRAUD_SINGLE_STAGE, FRAUD_PROCESSING_GUARANTEE, FRAUD_TRANSACTIONAL_ID,
    FRAUD_STANDBY_REPLICAS.
    """

    brokers: str = DEFAULT_BROKERS
    app_id: str = "fraud-worker"
    topic_prefix: str = ""
    # Partition count of the input topics and of the state tables (they must agree).
    partitions: int = 4
    # Replicas of each topic the engine creates, and how many must acknowledge a write
    # (min.insync.replicas; 2 with 3 replicas keeps acks=all writes going with a node down).
    replication_factor: int = 1
    min_insync_replicas: int = 1
    # Retention of the topics we create; -1 keeps records forever. Replayed history carries
    # its event time in the payload, and records get the wall-clock time as Kafka timestamp,
    # so time-based retention never deletes a replayed record before it is processed.
    retention_ms: int = 7 * _DAY_MS
    data_dir: Path = Path(".fraud")
    # Micro-batching of the worker's agents: a batch is at most batch_max records, gathered for
    # at most batch_within_s. Faust wakes each agent every batch_within_s; 10 ms against 2 ms
    # measured p99 65 ms against 140 ms at 2,000 tx/s (batched load, embedded broker) and a
    # fifth less worker CPU, as fewer, larger batches pay the fixed cost of a batch less often.
    batch_max: int = 1000
    batch_within_s: float = 0.010
    # Validation: event times later than now + this are refused.
    max_future_ms: int = 2 * _DAY_MS
    # Late arrivals kept in window state beyond the longest window.
    allowed_lateness_ms: int = _DAY_MS
    # The terminal stage waits for labels up to a transaction's event time until this long
    # after the later of the wait's start and the last label applied (fraud/worker/watermarks.py).
    label_wait_ms: int = 250
    # Event-time alignment of the customer partitions (fraud/worker/alignment.py): a partition
    # may run this far ahead of the slowest one that still has a backlog; a partition that
    # delivers nothing for align_idle_ms stops holding the others back; a partition holding
    # more than align_max_held transactions is paused until it drains.
    align_slack_ms: int = _HOUR_MS
    align_idle_ms: int = 5_000
    align_max_held: int = 50_000
    # In line (single_stage), how often changed state goes to the changelogs and the input is
    # acknowledged: a key written several times in between is sent once. Decisions do not wait
    # for it. Longer: less broker traffic, more input delivered again after a crash, and a
    # larger burst per checkpoint (measured at 2,000 tx/s batched: p99 49 ms at 0.2 s, 169 ms
    # at 1 s; a 403k-transaction replay 19,460 tx/s at 0.2 s, 21,320 at 1 s, 17-19k before).
    checkpoint_s: float = 0.2
    # "exactly_once": each checkpoint is one Kafka transaction holding the changed state, the
    # decisions, alerts and dead letters, and the consumed offsets (fraud/worker/emitter.py);
    # readers of the outputs see them once committed (isolation.level=read_committed).
    # "at_least_once": outputs are visible at once, and a crash applies up to a checkpoint of
    # input to the windows twice.
    processing_guarantee: str = "exactly_once"
    # The worker's transactional.id (None: derived from the app id, this host and the data
    # dir, so a worker restarted on the same data dir fences and aborts its own open
    # transaction); and how long an open transaction may last before the broker aborts it.
    transactional_id: str | None = None
    transaction_timeout_ms: int = 15_000
    # A worker that stops heartbeating (killed or stopped) keeps its partitions this long:
    # workers are static group members, so one restarted within it resumes them without a
    # rebalance; past it the others take them over.
    session_timeout_s: float = 15.0
    # Standby copies of each table partition that other workers keep up to date from the
    # changelogs (Faust's table_standby_replicas): a worker taking over a partition of one
    # that died starts from its standby instead of reading the whole changelog.
    standby_replicas: int = 1
    # Decide in the customer agent, skipping the repartition topic, while this worker owns
    # every partition (fraud/worker/partitions.py: RepartitionHop); off: always two stages.
    single_stage: bool = True
    # Decision table and model table (None: no model, the rules decide alone).
    rules_path: Path = Path(__file__).resolve().parent.parent / "tables" / "rules" / "v1.csv"
    model_path: Path | None = None
    # Model score thresholds for REVIEW and BLOCK.
    review_score: float = 0.5
    block_score: float = 0.9
    # Worker web/metrics port (0: let Faust pick; None disables).
    web_port: int | None = 6066
    # Prometheus /metrics of the worker (fraud.metrics); None disables.
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    topics: Topics = field(default_factory=Topics)

    def __post_init__(self) -> None:
        if self.processing_guarantee not in GUARANTEES:
            raise ValueError(
                f"processing guarantee {self.processing_guarantee!r} is not one of "
                + ", ".join(GUARANTEES)
            )
        if self.standby_replicas < 0:
            raise ValueError(f"standby replicas must be >= 0, got {self.standby_replicas}")

    @property
    def exactly_once(self) -> bool:
        return self.processing_guarantee == EXACTLY_ONCE

    @property
    def topic_names(self) -> Topics:
        return self.topics.prefixed(self.topic_prefix)

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with the given fields replaced; ``None`` values are ignored."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        base = cls()
        changes: dict[str, Any] = {
            "brokers": env.get("KAFKA_BOOTSTRAP"),
            "app_id": env.get("FRAUD_APP_ID"),
            "topic_prefix": env.get("FRAUD_TOPIC_PREFIX"),
            "partitions": _int(env, "FRAUD_PARTITIONS"),
            "replication_factor": _int(env, "FRAUD_REPLICATION_FACTOR"),
            "min_insync_replicas": _int(env, "FRAUD_MIN_INSYNC_REPLICAS"),
            "data_dir": Path(env["FRAUD_DATA_DIR"]) if env.get("FRAUD_DATA_DIR") else None,
            "label_wait_ms": _int(env, "FRAUD_LABEL_WAIT_MS"),
            "single_stage": _bool(env, "FRAUD_SINGLE_STAGE"),
            "processing_guarantee": env.get("FRAUD_PROCESSING_GUARANTEE") or None,
            "transactional_id": env.get("FRAUD_TRANSACTIONAL_ID") or None,
            "standby_replicas": _int(env, "FRAUD_STANDBY_REPLICAS"),
        }
        return base.with_overrides(**changes)


def _int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def _bool(env: Mapping[str, str], name: str) -> bool | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (1/0, true/false, yes/no, on/off)")
