"""The notification sink (``fraud notifier``): Kafka events in, emails and SMS out.

Its own process and consumer group (``{app_id}-notifier``), so a slow SMTP server or SMS gateway
never holds back detection. For each message of a route topic: decode it as the route's format,
plan the notifications (``fraud.sinks.notify.routing.plan``), drop duplicates and rate-limited ones,
send the rest with a few quick in-process retries, and put the ones given up on on
``{prefix}notifier-dlq`` as ``fraud.v1.DeadLetter``, the format of every dead-letter topic: a
reason code (``NOTIFIER_DEAD_LETTER_REASONS``), the failed notification's facts in ``detail``,
and the source record's coordinates, key and value. Offsets are committed after a message is
handled (and its dead letters written), so delivery is at-least-once; de-duplication state lives
in memory.

Kafka client: aiokafka. The senders (aiosmtplib, aiohttp) are asyncio, so an asyncio consumer
keeps everything on one event loop with no thread hand-off; it commits explicit offsets, leaves
the group cleanly on stop, and is already a dependency (Faust's transport).

``NotifierStats`` counts for one run; the same points feed the Prometheus series of
``fraud.metrics.NotifierMetrics`` (served by ``fraud notifier --metrics-port``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from fraud.broker import BrokerError, TopicSpec, admin_client, ensure_topics, topic_config
from fraud.contracts.dead_letter import DeadLetter, dead_letter, dead_letter_record
from fraud.contracts.records import RawRecord
from fraud.contracts.wire import Rejected
from fraud.kafka_config import aiokafka_config
from fraud.metrics import NOTIFIER_DEAD_LETTER_REASONS, NotifierMetrics, notifier_metrics
from fraud.serve import run_until_signalled
from fraud.settings import Settings
from fraud.sinks.notify.email import EmailSender
from fraud.sinks.notify.routing import (
    Channel,
    ConfigError,
    Deduper,
    DeliveryConfig,
    EventError,
    Notification,
    NotifyConfig,
    RateLimiter,
    Route,
    SendError,
    Skipped,
    decode_event,
    load_config,
    plan,
)
from fraud.sinks.notify.sms import SmsSender
from fraud.sinks.retry import CircuitBreaker
from fraud.worker import fetch_backoff

__all__ = [
    "Dispatcher",
    "NotifierStats",
    "Sender",
    "dlq_topic",
    "group_id",
    "make_senders",
    "redriven_topic",
    "resolve_topic",
    "run_notifier",
    "serve_notifier",
]

log = logging.getLogger("fraud.notifier")

# Reason codes of the notifier's dead letters: not the route's format, a route matched without a
# usable recipient, a notification given up on after its retries.
DECODE_ERROR, NO_RECIPIENT, SEND_FAILED = NOTIFIER_DEAD_LETTER_REASONS


class Sender(Protocol):
    async def send(self, notification: Notification) -> None: ...

    async def close(self) -> None: ...


@dataclass
class NotifierStats:
    """Counters of one notifier run (also handy for tests waiting on a condition)."""

    received: int = 0  # messages read
    handled: int = 0  # messages fully handled (sent, suppressed or dead-lettered)
    undecodable: int = 0  # messages that are not the route's format (dead-lettered)
    sent: int = 0  # notifications delivered
    deduplicated: int = 0  # suppressed: same subject and type within the window
    rate_limited: int = 0  # suppressed: the recipient's token bucket was empty
    retries: int = 0  # extra send attempts
    failed: int = 0  # notifications given up on (dead-lettered)
    skipped: int = 0  # route matched but no usable recipient (dead-lettered)
    dead_letters: int = 0  # records written to the notifier DLQ
    committed: int = 0  # messages whose offset was committed


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}-notifier"


def dlq_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}notifier-dlq"


def redriven_topic(settings: Settings) -> str:
    """Compacted topic of the dead letters already re-driven (see ``fraud.sinks.notify.dlq``)."""
    return f"{settings.topic_prefix}notifier-dlq-redriven"


def resolve_topic(settings: Settings, topic: str) -> str:
    """An engine topic ("alerts", "decisions", ...) gets the prefix; any other is used as given."""
    base, named = settings.topics, settings.topic_names
    for name in ("transactions", "decisions", "alerts", "labels", "dead_letters"):
        if topic == getattr(base, name):
            return str(getattr(named, name))
    return topic


class Dispatcher:
    """Everything between a decoded message and the senders; Kafka-free.

    ``handle`` returns the dead letters of a record, for the caller to produce.
    """

    def __init__(
        self,
        config: NotifyConfig,
        senders: Mapping[Channel, Sender],
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        stats: NotifierStats | None = None,
        metrics: NotifierMetrics | None = None,
    ) -> None:
        self.config = config
        self.senders = senders
        self.clock = clock
        self.monotonic = monotonic
        self.sleep = sleep
        self.stats = stats if stats is not None else NotifierStats()
        self.metrics = metrics if metrics is not None else notifier_metrics()
        d = config.delivery
        self._limits = {r.name: RateLimiter(r.rate_limit_per_minute) for r in config.routes}
        self._dedupe = {r.name: Deduper(r.dedupe_window_s) for r in config.routes}
        self._breakers = {
            ch: CircuitBreaker(d.breaker_failures, d.breaker_reset_s) for ch in senders
        }
        # Per channel: the last failure that counted for its breaker, said when it is open.
        self._last_failure: dict[str, str] = {}
        for route in config.routes:
            self.metrics.route(route.name, route.channel)
        for channel, breaker in self._breakers.items():
            self.metrics.breaker(channel, breaker.state)

    async def handle(self, routes: Sequence[Route], record: RawRecord) -> list[DeadLetter]:
        self.stats.received += 1
        self.metrics.records.labels(record.topic).inc()
        letters: list[DeadLetter] = []
        formats = dict.fromkeys(r.format for r in routes)
        for fmt in formats:
            try:
                event = decode_event(fmt, record.value)
            except EventError as exc:
                self.stats.undecodable += 1
                log.warning("undecodable message at %s: %s", _where(record), exc)
                names = ",".join(r.name for r in routes if r.format == fmt)
                letters.append(self._letter(DECODE_ERROR, f"{exc}; routes={names}", record))
                continue
            for item in plan(self.config, [r for r in routes if r.format == fmt], event):
                letter = await self._one(item, record)
                if letter is not None:
                    letters.append(letter)
        return letters

    def _letter(self, reason: str, detail: str, record: RawRecord) -> DeadLetter:
        self.metrics.dead_letters.labels(reason).inc()
        return dead_letter(
            Rejected(reason, detail),
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            payload=record.value,
            now_ms=int(self.clock() * 1000),
        )

    async def _one(self, item: Notification | Skipped, record: RawRecord) -> DeadLetter | None:
        if isinstance(item, Skipped):
            self.stats.skipped += 1
            log.warning(
                "route %s: nothing sent for %s: %s", item.route, _where(record), item.reason
            )
            return self._letter(NO_RECIPIENT, f"{item.reason}; route={item.route}", record)
        now = self.clock()
        dedupe = self._dedupe[item.route]
        if dedupe.is_duplicate(item.dedupe_key, now):
            self.stats.deduplicated += 1
            self.metrics.notification(item.route, item.channel, "deduplicated")
            log.info("route %s: duplicate within the window, not sent", item.route)
            return None
        if not self._limits[item.route].allow(item.to, now):
            self.stats.rate_limited += 1
            self.metrics.notification(item.route, item.channel, "rate_limited")
            log.warning("route %s: recipient over its rate limit, not sent", item.route)
            return None
        if item.missing:
            log.warning("route %s: template fields missing in the event: %s", item.route,
                        ", ".join(item.missing))  # fmt: skip
        reason, attempts = await self._deliver(item)
        # _deliver is what moves the breaker (allow may half-open it, results close or open it)
        self.metrics.breaker(item.channel, self._breakers[item.channel].state)
        if reason is None:
            self.stats.sent += 1
            self.metrics.notification(item.route, item.channel, "sent")
            dedupe.record(item.dedupe_key, self.clock())
            return None
        self.stats.failed += 1
        self.metrics.notification(item.route, item.channel, "failed")
        log.warning("route %s: %s notification given up: %s", item.route, item.channel, reason)
        return self._letter(SEND_FAILED, _failed_detail(reason, item, attempts), record)

    async def deliver(self, item: Notification) -> str | None:
        """Send ``item`` with the retries and its channel's breaker, but no de-duplication or
        rate limit: the re-drive of a dead letter, which passed both when it was first tried.
        None once sent, else why not."""
        reason, _ = await self._deliver(item)
        self.metrics.breaker(item.channel, self._breakers[item.channel].state)
        return reason

    async def _deliver(self, item: Notification) -> tuple[str | None, int]:
        """Send with bounded retries; (None, attempts) on success, else (reason, attempts)."""
        d: DeliveryConfig = self.config.delivery
        sender = self.senders[item.channel]
        breaker = self._breakers[item.channel]
        if not breaker.allow(self.monotonic()):
            last = self._last_failure.get(item.channel, "unknown")
            state = f"circuit open: {item.channel} failed {breaker.consecutive_failures} times"
            return f"{last} (last failure; {state})", 0
        attempt = 0
        reason = "not sent"
        while attempt < d.attempts:
            attempt += 1
            try:
                await self._send(sender, item)
            except SendError as exc:
                reason = exc.reason
                if not exc.retryable:
                    breaker.record_success()  # the server answered: it is up
                    return reason, attempt
                if attempt < d.attempts:
                    delay = min(d.max_backoff_s, d.backoff_s * 2 ** (attempt - 1))
                    if exc.retry_after is not None:
                        delay = max(delay, min(exc.retry_after, d.max_backoff_s))
                    self.stats.retries += 1
                    self.metrics.retries.labels(item.channel).inc()
                    log.info("route %s: attempt %d failed (%s), retry in %.2f s", item.route,
                             attempt, reason, delay)  # fmt: skip
                    await self.sleep(delay)
            except Exception as exc:
                log.exception("route %s: %s sender crashed", item.route, item.channel)
                return f"sender error: {type(exc).__name__}: {exc}", attempt
            else:
                breaker.record_success()
                return None, attempt
        breaker.record_failure(self.monotonic())
        self._last_failure[item.channel] = reason
        return f"{reason} (after {attempt} attempts)", attempt

    async def _send(self, sender: Sender, item: Notification) -> None:
        started = time.perf_counter()
        try:
            await sender.send(item)
        finally:
            self.metrics.send_duration.labels(item.channel).observe(time.perf_counter() - started)


def _where(record: RawRecord) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


def _failed_detail(reason: str, item: Notification, attempts: int) -> str:
    """What was not sent, and why: the reason, then the notification's facts as ``key=value``."""
    return (
        f"{reason}; route={item.route} channel={item.channel} to={item.to} "
        f"attempts={attempts} subject={item.subject!r}"
    )


def make_senders(config: NotifyConfig) -> dict[Channel, Sender]:
    senders: dict[Channel, Sender] = {}
    if config.smtp is not None:
        senders["email"] = EmailSender(config.smtp)
    if config.sms is not None:
        senders["sms"] = SmsSender(config.sms)
    return senders


def _missing_topics(settings: Settings, topics: Sequence[str]) -> list[str]:
    existing = admin_client(settings.brokers).list_topics(timeout=10).topics
    return [t for t in topics if t not in existing]


async def _commit(
    consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, int], stats: NotifierStats, n: int
) -> None:
    try:
        await consumer.commit(offsets)
        stats.committed += n
    except (CommitFailedError, IllegalStateError) as exc:  # a rebalance took the partition
        log.warning("commit failed (rebalance), messages may be notified again: %s", exc)


async def run_notifier(
    settings: Settings,
    config_path: Path,
    *,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    clock: Callable[[], float] = time.time,
    stats: NotifierStats | None = None,
    senders: Mapping[Channel, Sender] | None = None,
    metrics: NotifierMetrics | None = None,
) -> None:
    """Consume the route topics and notify until ``stop`` is set.

    ``ready`` is set once the group has assigned partitions. ``clock`` (seconds) drives rate
    limits and de-duplication windows. ``senders`` replaces the configured ones (tests).
    ``metrics`` defaults to this process's shared ``fraud.metrics.notifier_metrics()``.
    """
    fetch_backoff.install()
    config = load_config(config_path)
    stats = stats if stats is not None else NotifierStats()
    routes: dict[str, list[Route]] = {}
    for route in config.routes:
        routes.setdefault(resolve_topic(settings, route.topic), []).append(route)
    dlq = dlq_topic(settings)
    await asyncio.to_thread(ensure_topics, settings, [TopicSpec(dlq, 1, topic_config(settings))])
    missing = await asyncio.to_thread(_missing_topics, settings, list(routes))
    for topic in missing:
        log.warning("topic %r does not exist yet; it is picked up once created", topic)
    own_senders = senders is None
    active: Mapping[Channel, Sender] = make_senders(config) if senders is None else senders
    dispatcher = Dispatcher(config, active, clock=clock, stats=stats, metrics=metrics)
    consumer = AIOKafkaConsumer(
        *routes,
        **aiokafka_config(
            settings,
            group_id=group_id(settings),
            client_id=group_id(settings),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # answered early when records arrive; see fraud/sinks/webhooks/service.py
            fetch_max_wait_ms=500,
            metadata_max_age_ms=30_000,
            # alerts of a worker transaction that aborted are never read, hence never notified
            isolation_level="read_committed",
        ),
    )
    producer = AIOKafkaProducer(
        **aiokafka_config(settings, client_id=group_id(settings), acks="all")
    )
    await producer.start()
    try:
        await consumer.start()
        try:
            log.info("notifier: %d route(s) on %s, group %s, dead letters on %s",
                     len(config.routes), ", ".join(routes), group_id(settings), dlq)  # fmt: skip
            await _consume(consumer, producer, dispatcher, routes, dlq, stop, ready, stats)
        finally:
            await consumer.stop()
    finally:
        await producer.stop()
        if own_senders:
            for sender in active.values():
                with contextlib.suppress(Exception):
                    await sender.close()


async def _consume(
    consumer: AIOKafkaConsumer,
    producer: AIOKafkaProducer,
    dispatcher: Dispatcher,
    routes: Mapping[str, Sequence[Route]],
    dlq: str,
    stop: asyncio.Event,
    ready: asyncio.Event | None,
    stats: NotifierStats,
) -> None:
    while not stop.is_set():
        batches: dict[TopicPartition, list[ConsumerRecord[bytes, bytes]]]
        batches = await consumer.getmany(timeout_ms=200, max_records=200)
        if ready is not None and not ready.is_set() and consumer.assignment():
            ready.set()
        for tp, records in batches.items():
            done = 0
            for record in records:
                raw = RawRecord(
                    record.key, record.value, record.topic, record.partition, record.offset,
                    record.timestamp,
                )  # fmt: skip
                for letter in await dispatcher.handle(routes[record.topic], raw):
                    out = dead_letter_record(letter)
                    await producer.send_and_wait(dlq, out.value, key=out.key, headers=out.headers)
                    stats.dead_letters += 1
                stats.handled += 1
                done += 1
                if stop.is_set():
                    break
            if done:
                await _commit(consumer, {tp: records[done - 1].offset + 1}, stats, done)
            if stop.is_set():
                return


def serve_notifier(settings: Settings, config_path: Path) -> int:
    """Run the notifier until SIGTERM or SIGINT; the exit code for the CLI."""
    try:
        load_config(config_path)  # fail fast, before touching Kafka
    except ConfigError as exc:
        print(f"fraud notifier: {exc}", file=sys.stderr)
        return 2

    try:
        run_until_signalled(lambda stop: run_notifier(settings, config_path, stop=stop))
    except ConfigError as exc:
        print(f"fraud notifier: {exc}", file=sys.stderr)
        return 2
    except (BrokerError, KafkaError) as exc:
        print(f"fraud notifier: {exc}", file=sys.stderr)
        return 1
    return 0
