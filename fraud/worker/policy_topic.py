"""Hot policy updates through a compacted Kafka topic, ``{prefix}policy``.

The topic holds at most two live records (one partition, ``cleanup.policy=compact``, kept
forever): key ``b"rules"`` with the bytes of a decision table (CSV, ``fraud.rules.table``) and
key ``b"model"`` with the bytes of a model table (JSON, ``fraud.model.table``). A tombstone for
``b"model"`` (``clear_model``) means "rules only". Headers ``version``, ``file`` and
``published_at`` (ISO 8601, UTC) describe the record; the value alone is authoritative.

Publishing (``publish_rules``, ``publish_model``) validates the file exactly as the worker will
(parse and compile against ``ALL_FEATURES`` / parse and ``check_features``) and raises the
one-line ``RuleTableError`` / ``ModelTableError`` before anything is produced.

``PolicyWatcher`` reads the topic from the beginning on every start (``assign`` partition 0 at
``OFFSET_BEGINNING``, nothing committed), overlaying each record on the policy it started with:
the initial policy (from files) stays until the topic provides a rules or model record, and a
component the topic never mentions keeps its initial value. A record that does not validate
(a table produced without ``publish_*``) is logged and reported to ``on_error``, and the running
policy stays. ``on_policy`` is called at most once per ``poll_once`` with the resulting policy,
so a replay of several records swaps once.

A rules tombstone is ignored (a worker cannot run without rules). Kafka removes tombstones
after ``delete.retention.ms``; the topic sets it to the maximum so ``clear_model`` keeps
overriding a model given to the worker by file.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from fraud.broker import BrokerError, TopicSpec, admin_client, create_topics, topic_config
from fraud.contracts.units import ALL_FEATURES
from fraud.kafka_config import (
    make_consumer,
    make_producer,
    watermark_offsets,
)
from fraud.model.table import ModelTable, ModelTableError, check_features, from_json
from fraud.rules.compiled import CompiledRules, compile_rules
from fraud.rules.table import RuleTableError, parse_rule_table
from fraud.scoring.policy import Policy
from fraud.settings import Settings

__all__ = [
    "HEADER_FILE",
    "HEADER_PUBLISHED_AT",
    "HEADER_VERSION",
    "MODEL_KEY",
    "RULES_KEY",
    "PolicyTopicError",
    "PolicyWatcher",
    "clear_model",
    "ensure_policy_topic",
    "parse_model",
    "parse_rules",
    "policy_topic",
    "policy_topic_spec",
    "publish_model",
    "publish_rules",
]

log = logging.getLogger("fraud.policy_topic")

RULES_KEY = b"rules"
MODEL_KEY = b"model"
HEADER_VERSION = "version"
HEADER_FILE = "file"
HEADER_PUBLISHED_AT = "published_at"
_LONG_MAX = str(2**63 - 1)


class PolicyTopicError(BrokerError):
    """The policy topic could not be written or read (a ``BrokerError``: the CLI prints it)."""


def policy_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}policy"


def policy_topic_spec(settings: Settings) -> TopicSpec:
    """One partition (total order of updates), compacted, never deleted by age."""
    return TopicSpec(
        policy_topic(settings),
        1,
        topic_config(
            settings,
            {"cleanup.policy": "compact", "retention.ms": "-1", "delete.retention.ms": _LONG_MAX},
        ),
    )


def ensure_policy_topic(settings: Settings, timeout_s: float = 10.0) -> bool:
    """Create the policy topic alone when missing (True when created).

    Unlike ``ensure_topics`` this does not check the engine's input topics, so the publish
    commands do not need the worker's ``--partitions``.
    """
    spec = policy_topic_spec(settings)
    admin = admin_client(settings.brokers)
    try:
        if spec.name in admin.list_topics(timeout=timeout_s).topics:
            return False
    except KafkaException as exc:
        raise BrokerError(f"cannot reach Kafka at {settings.brokers}: {exc}") from None
    return bool(create_topics(admin, settings, [spec], timeout_s))


# Validation (the same for the publisher and the watcher)


def _text(data: bytes, source: str, error: type[ValueError]) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{source}: not UTF-8: {exc}") from None


def parse_rules(data: bytes, source: str) -> CompiledRules:
    """Parse and compile a decision table; raises ``RuleTableError`` naming ``source``."""
    table = parse_rule_table(_text(data, source, RuleTableError), ALL_FEATURES, source=source)
    return compile_rules(table, ALL_FEATURES)


def parse_model(data: bytes, source: str) -> tuple[ModelTable, tuple[int, ...]]:
    """Parse a model table and map its features; raises ``ModelTableError`` naming ``source``."""
    model = from_json(_text(data, source, ModelTableError), source=source)
    try:
        columns = tuple(int(c) for c in check_features(model, ALL_FEATURES))
    except ModelTableError as exc:
        raise ModelTableError(f"{source}: {exc}") from None
    return model, columns


# Publishing


def _produce(
    settings: Settings, key: bytes, value: bytes | None, headers: Sequence[tuple[str, bytes]]
) -> None:
    ensure_policy_topic(settings)
    topic = policy_topic(settings)
    producer = make_producer(settings, acks="all")
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            errors.append(str(err))

    producer.produce(
        topic, value=value, key=key, partition=0, headers=list(headers), on_delivery=delivered
    )
    if producer.flush(30.0) > 0:
        raise PolicyTopicError(f"publishing {key.decode()} to {topic!r} timed out")
    if errors:
        raise PolicyTopicError(f"publishing {key.decode()} to {topic!r} failed: {errors[0]}")


def _headers(version: str, name: str) -> list[tuple[str, bytes]]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    return [
        (HEADER_VERSION, version.encode()),
        (HEADER_FILE, name.encode()),
        (HEADER_PUBLISHED_AT, now.encode()),
    ]


def _publish(
    settings: Settings,
    path: str | Path,
    key: bytes,
    error: type[Exception],
    version_of: Callable[[bytes, str], str],
    kind: str,
) -> str:
    """Read the table at ``path``, validate it (``version_of`` raises ``error``), publish it
    under ``key``; returns its version."""
    target = Path(path)
    try:
        data = target.read_bytes()
    except OSError as exc:
        raise error(f"{target}: cannot read: {exc}") from None
    version = version_of(data, str(target))
    _produce(settings, key, data, _headers(version, target.name))
    log.info("published %s %s from %s", kind, version, target)
    return version


def publish_rules(settings: Settings, path: str | Path) -> str:
    """Validate the decision table at ``path`` and publish it; returns its version."""
    return _publish(
        settings, path, RULES_KEY, RuleTableError, lambda d, n: parse_rules(d, n).version, "rules"
    )


def publish_model(settings: Settings, path: str | Path) -> str:
    """Validate the model table at ``path`` and publish it; returns its version."""
    return _publish(
        settings, path, MODEL_KEY, ModelTableError, lambda d, n: parse_model(d, n)[0].version,
        "model",
    )  # fmt: skip


def clear_model(settings: Settings) -> None:
    """Publish a tombstone for the model: workers go back to deciding with the rules only."""
    _produce(settings, MODEL_KEY, None, [])
    log.info("published model tombstone")


# Watching


def _header(msg: Message, name: str) -> str:
    for item in msg.headers() or ():
        key, value = item[0], item[1]
        if key == name and isinstance(value, bytes):
            return value.decode("utf-8", "replace")
    return ""


class PolicyWatcher:
    """Follows the policy topic and hands each new valid policy to ``on_policy``.

    Drive it with ``poll_once`` (tests, or a loop of the caller's) or ``start``/``stop`` (a daemon
    thread: ``on_policy`` and ``on_error`` are then called from that thread). ``catch_up`` reads
    everything published so far, synchronously, e.g. before the worker starts deciding.
    ``on_policy`` and ``on_error`` are plain attributes: set them again before ``start`` to
    route the thread's swaps to an event loop that did not exist when the watcher was built.
    """

    def __init__(
        self,
        settings: Settings,
        initial: Policy,
        on_policy: Callable[[Policy], None],
        on_error: Callable[[str], None] | None = None,
        *,
        review_score: float | None = None,
        block_score: float | None = None,
    ) -> None:
        self.settings = settings
        self.topic = policy_topic(settings)
        self.on_policy = on_policy
        self.on_error = on_error
        if review_score is not None or block_score is not None:
            initial = dataclasses.replace(
                initial,
                review_score=initial.review_score if review_score is None else review_score,
                block_score=initial.block_score if block_score is None else block_score,
            )
        self._current = initial
        self._consumer: Consumer | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_offset = 0

    @property
    def current(self) -> Policy:
        """The policy in force: the initial one until the topic provided a valid update."""
        return self._current

    def _open(self) -> Consumer:
        if self._consumer is None:
            ensure_policy_topic(self.settings)
            consumer = make_consumer(
                self.settings,
                **{
                    # Required by the client; never used: offsets are neither committed
                    # nor stored, each start replays the topic from the beginning.
                    "group.id": f"{self.settings.app_id}-policy-{uuid.uuid4().hex[:8]}",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                },
            )
            consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
            self._consumer = consumer
        return self._consumer

    def poll_once(self, timeout_s: float = 1.0) -> bool:
        """Apply the records available within ``timeout_s``; True when the policy changed."""
        with self._lock:
            consumer = self._open()
            messages = consumer.consume(500, timeout_s)
            candidate = self._current
            for msg in messages:
                candidate = self._apply(candidate, msg)
            if candidate is self._current:
                return False
            self._current = candidate
        log.warning(
            "policy swapped: rules %s, model %s",
            candidate.rules_version,
            candidate.model_version or "(none)",
        )
        try:
            self.on_policy(candidate)
        except Exception:
            log.exception("on_policy failed")
        return True

    def catch_up(self, timeout_s: float = 30.0) -> Policy:
        """Read up to the end of the topic as of now; returns the resulting policy."""
        consumer = self._open()
        try:
            _, high = watermark_offsets(consumer, TopicPartition(self.topic, 0), timeout_s)
        except KafkaException as exc:
            raise PolicyTopicError(f"cannot read {self.topic!r}: {exc}") from None
        deadline = time.monotonic() + timeout_s
        while self._next_offset < high:
            if time.monotonic() > deadline:
                raise PolicyTopicError(
                    f"reading {self.topic!r} did not reach offset {high} in {timeout_s:.0f} s"
                )
            self.poll_once(0.2)
        return self._current

    def _apply(self, policy: Policy, msg: Message) -> Policy:
        error = msg.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("policy topic %s: %s", self.topic, error)
            return policy
        offset = msg.offset() or 0
        self._next_offset = max(self._next_offset, offset + 1)
        key, value = msg.key(), msg.value()
        name = _header(msg, HEADER_FILE) or "?"
        source = f"{self.topic}@{offset} ({name})"
        try:
            if key == RULES_KEY:
                if value is None:
                    log.warning("%s: rules tombstone ignored; keeping rules", source)
                    return policy
                return dataclasses.replace(policy, rules=parse_rules(value, source))
            if key == MODEL_KEY:
                if value is None:
                    if policy.model is None:
                        return policy
                    return dataclasses.replace(policy, model=None, model_columns=())
                model, columns = parse_model(value, source)
                return dataclasses.replace(policy, model=model, model_columns=columns)
        except (RuleTableError, ModelTableError) as exc:
            message = f"rejected policy update, keeping the running policy: {exc}"
            log.error("%s", message)
            if self.on_error is not None:
                try:
                    self.on_error(message)
                except Exception:
                    log.exception("on_error failed")
            return policy
        log.warning("%s: unknown key %r ignored", self.topic, key)
        return policy

    def start(self) -> None:
        """Follow the topic in a daemon thread (callbacks run on that thread)."""
        if self._thread is not None:
            return
        self._open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fraud-policy", daemon=True)
        self._thread.start()

    # Between checks the partition is paused: an idle librdkafka consumer re-fetches in a loop
    # against a broker that answers empty fetches at once (about half a core against the
    # embedded broker, measured), and a policy change may take this long to reach the worker.
    CHECK_EVERY_S = 1.0

    def _run(self) -> None:
        partition = TopicPartition(self.topic, 0)
        with self._lock:
            self._open().pause([partition])
        while not self._stop.is_set():
            try:
                # One watermark request per check; the partition is resumed (and fetched) only
                # when something new was written, so an unchanged policy costs no fetch loop.
                with self._lock:
                    _, high = watermark_offsets(self._open(), partition, 5.0)
                if high > self._next_offset:
                    with self._lock:
                        self._open().resume([partition])
                    # (bounded: offsets of control records are never delivered)
                    deadline = time.monotonic() + 5.0
                    while self._next_offset < high and time.monotonic() < deadline:
                        self.poll_once(0.2)
                    with self._lock:
                        self._open().pause([partition])
            except Exception:
                log.exception("policy watcher poll failed")
            self._stop.wait(self.CHECK_EVERY_S)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the thread (if any) and close the consumer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        with self._lock:
            if self._consumer is not None:
                self._consumer.close()
                self._consumer = None

    def __enter__(self) -> PolicyWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
