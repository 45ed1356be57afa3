"""The webhook sink: signed HTTP POSTs of alerts to subscribers, with retry topics and a DLQ.

Flow::

    alerts ─► main consumer, group "{app_id}-webhooks" ─► a task per (alert, subscription)
        2xx: done
        retryable: ─► {alerts}-webhooks-retry-{level}
        not retryable, or attempts exhausted: ─► {alerts}-webhooks-dlq
        offsets committed per partition up to the first unfinished delivery (OffsetTracker)
    {alerts}-webhooks-retry-{level} ─► a retry consumer per level,
        group "{app_id}-webhooks-retry-{level}": waits until the head message of a partition is
        due (that partition paused), re-delivers, and routes the outcome the same way

Design choices:

* **aiokafka**, not confluent-kafka: the sink is I/O-bound and lives on one asyncio loop with the
  aiohttp client; aiokafka gives per-partition ``pause``/``resume``, explicit offset commits and
  background heartbeats without a poll thread. Volumes are those of alerts (a small fraction of
  transactions), far below where librdkafka's batching would matter.
* **Never awaiting a batch.** Every (alert, subscription) delivery is its own task; the consumer
  loop goes on fetching while they run. ``OffsetTracker`` commits a partition only up to the
  lowest offset with an unfinished delivery; "finished" is 2xx, or the envelope acknowledged by
  the retry or dead-letter topic. A crash re-sends what was not committed: at-least-once, and
  the stable event id ``"{alert_id}:{subscription_id}"`` (``Fraud-Event-Id`` header) lets the
  receiver de-duplicate, which makes it exactly-once from the receiver's point of view.
* **Isolation.** Per subscription: an ``asyncio.Semaphore(max_concurrency)``, a
  ``CircuitBreaker`` (open: the delivery goes to the retry topic without calling the endpoint,
  and counts as an attempt), and a cap on its pending deliveries (``max_pending_per_endpoint``:
  beyond it a delivery is *deferred* to the retry topic without counting an attempt), so a slow
  endpoint cannot take all of the process-wide ``max_in_flight`` slots that bound memory.
* **Retry topics.** ``RetryPolicy.delays[i]`` is topic level ``i``. A retry consumer decodes the
  head of each partition; when it is not due, it keeps it (and whatever came after it) in
  memory, pauses that partition and sleeps until the earliest due time, while other partitions,
  levels and the main stream go on. Messages of one level have (nearly) the same delay, so the
  head is (nearly) the earliest; ``next_step`` sends long ``Retry-After`` waits to a later level.
* **Dead letters** are ``fraud.v1.DeadLetter`` like those of every dead-letter topic: a reason
  code (``DEAD_LETTER_REASONS``), a detail, the alert's topic, partition and offset, and as
  payload the envelope with ``attempt``, first/last attempt times, last status and error;
  ``fraud.sinks.webhooks.dlq`` lists and re-drives them.
* **Metrics.** ``WebhookStats`` counts for this run (tests, the summary line); the same points
  feed the Prometheus series of ``fraud.metrics.WebhookMetrics`` per endpoint (subscription
  id), served by ``fraud webhooks --metrics-port``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import KafkaError
from google.protobuf.message import DecodeError

from fraud.broker import TopicSpec, ensure_topics, topic_config
from fraud.contracts.dead_letter import dead_letter_record
from fraud.contracts.wire import Rejected, to_json
from fraud.kafka_config import aiokafka_config
from fraud.metrics import EndpointMetrics, WebhookMetrics, webhook_metrics
from fraud.serve import run_until_signalled
from fraud.settings import Settings
from fraud.sinks.retry import (
    Action,
    CircuitBreaker,
    Outcome,
    RetryPolicy,
    classify_with_reason,
    next_step,
    retry_after_seconds,
)
from fraud.sinks.webhooks.envelope import (
    Envelope,
    OffsetTracker,
    decode,
    encode,
    envelope_dead_letter,
    event_id_for,
    percentile,
)
from fraud.sinks.webhooks.signing import sign
from fraud.sinks.webhooks.subscriptions import Subscription, SubscriptionWatcher
from fraud.v1.alert_pb2 import Alert
from fraud.worker import fetch_backoff

__all__ = [
    "DEAD_LETTER_REASONS",
    "WebhookStats",
    "dlq_topic",
    "group_id",
    "redriven_topic",
    "retry_group_id",
    "retry_topic",
    "run_webhooks",
    "serve_webhooks",
    "sink_topics",
]

log = logging.getLogger(__name__)

USER_AGENT = "fraud-webhooks/1"
ERROR_SNIPPET_BYTES = 200
# The broker answers a fetch as soon as records arrive, so a long wait costs no latency while
# records flow; it only bounds how often an idle consumer asks. Six consumers at 20 ms cost a
# third of a core and loaded the broker in the demo; a retry that waits behind a held fetch
# after its partition resumes is late by at most this, well inside the retry jitter.
FETCH_MAX_WAIT_MS = 500
POLL_MS = 100
# Reason codes of the webhook dead letters.
SUBSCRIPTION_REMOVED = "subscription_removed"
NOT_RETRYABLE = "not_retryable"  # e.g. a 4xx answer
ATTEMPTS_EXHAUSTED = "attempts_exhausted"
DEAD_LETTER_REASONS = (SUBSCRIPTION_REMOVED, NOT_RETRYABLE, ATTEMPTS_EXHAUSTED)


# ---------------------------------------------------------------- names


def retry_topic(settings: Settings, level: int) -> str:
    return f"{settings.topic_names.alerts}-webhooks-retry-{level}"


def dlq_topic(settings: Settings) -> str:
    return f"{settings.topic_names.alerts}-webhooks-dlq"


def redriven_topic(settings: Settings) -> str:
    """Compacted topic of the dead letters already re-driven (see ``fraud.sinks.webhooks.dlq``)."""
    return f"{settings.topic_names.alerts}-webhooks-dlq-redriven"


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}-webhooks"


def retry_group_id(settings: Settings, level: int) -> str:
    return f"{settings.app_id}-webhooks-retry-{level}"


def sink_topics(settings: Settings, policy: RetryPolicy) -> list[TopicSpec]:
    """Retry topics (``settings.partitions`` each), the DLQ and its re-drive log (1 each)."""
    config = topic_config(settings)
    return [
        *(
            TopicSpec(retry_topic(settings, level), settings.partitions, config)
            for level in range(len(policy.delays))
        ),
        TopicSpec(dlq_topic(settings), 1, config),
        TopicSpec(
            redriven_topic(settings), 1, topic_config(settings, {"cleanup.policy": "compact"})
        ),
    ]


# ---------------------------------------------------------------- stats


@dataclass
class WebhookStats:
    """Counters of a running sink, and alert -> 2xx latencies (ms, the most recent 100,000)."""

    delivered: int = 0
    attempts: int = 0
    retried: int = 0  # handed to a retry topic after a failed attempt
    deferred: int = 0  # handed to a retry topic without an attempt (endpoint saturated)
    dead_lettered: int = 0
    short_circuited: int = 0  # breaker open: not called
    skipped: int = 0  # undecodable alerts or envelopes
    reloads: int = 0  # subscription file re-read after a change
    reload_errors: int = 0  # ... and found invalid (the running set was kept)
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies_ms, q)

    def summary(self) -> str:
        lat = (
            f"latency p50 {self.latency_ms(0.5):.0f} ms p99 {self.latency_ms(0.99):.0f} ms"
            if self.latencies_ms
            else "no latency sample"
        )
        return (
            f"webhooks: {self.delivered} delivered, {self.attempts} attempts, "
            f"{self.retried} retried, {self.deferred} deferred, "
            f"{self.dead_lettered} dead-lettered, "
            f"{self.short_circuited} short-circuited, {self.skipped} skipped; {lat} "
            "(alert created -> 2xx)"
        )


# ---------------------------------------------------------------- delivery


@dataclass(frozen=True)
class _Attempt:
    status: int | None
    error: str
    retry_after: str | None
    called: bool
    circuit: str = ""  # not called: the open breaker's state


@dataclass
class _Endpoint:
    sub: Subscription
    semaphore: asyncio.Semaphore
    breaker: CircuitBreaker
    metrics: EndpointMetrics
    pending: int = 0
    # The last attempt that reached the endpoint and counted as a failure for its breaker.
    last_failure: _Attempt | None = None

    def short_circuited(self) -> _Attempt:
        """The outcome of a delivery the open breaker did not let through: the endpoint's last
        real failure (HTTP 500, a timeout), with the breaker's state said in the error."""
        failures = self.breaker.consecutive_failures
        state = f"circuit {self.breaker.state.value} after {failures} consecutive failures"
        last = self.last_failure
        if last is None:
            return _Attempt(None, state, None, False, state)
        return _Attempt(last.status, f"{last.error} (last answer; {state})", None, False, state)


class _Sink:
    """Delivers envelopes and routes the outcome; shared by the main and the retry consumers."""

    def __init__(
        self,
        settings: Settings,
        watcher: SubscriptionWatcher,
        *,
        policy: RetryPolicy,
        clock: Callable[[], float],
        stats: WebhookStats,
        metrics: WebhookMetrics,
        stop: asyncio.Event,
        rng: random.Random,
        max_in_flight: int,
        max_pending_per_endpoint: int,
        breaker_factory: Callable[[], CircuitBreaker],
    ) -> None:
        self.settings = settings
        self.watcher = watcher
        self.policy = policy
        self.clock = clock
        self.stats = stats
        self.metrics = metrics
        self.stop = stop
        self.rng = rng
        self.max_pending = max_pending_per_endpoint
        self.breaker_factory = breaker_factory
        self.slots = asyncio.Semaphore(max_in_flight)
        self.tasks: set[asyncio.Task[None]] = set()
        self.endpoints: dict[str, _Endpoint] = {}
        self.session: aiohttp.ClientSession | None = None
        self.producer: Any = None

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    async def start(self) -> None:
        # per-endpoint semaphores bound the concurrency; no pool-wide connection limit
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0), headers={"User-Agent": USER_AGENT}
        )
        self.producer = AIOKafkaProducer(
            **aiokafka_config(
                self.settings, client_id=f"{self.settings.app_id}-webhooks", acks="all", linger_ms=2
            )
        )
        await self.producer.start()

    async def close(self) -> None:
        if self.producer is not None:
            await self.producer.stop()
        if self.session is not None:
            await self.session.close()

    # -- tasks

    async def spawn(self, envelope: Envelope, on_done: Callable[[], None]) -> None:
        """Start delivering ``envelope`` in a task (waits for a free in-flight slot first).

        ``on_done`` runs when the delivery is finished (delivered or handed to a topic); it does
        not run when the task fails or is cancelled, so its offset stays uncommitted.
        """
        await self.slots.acquire()
        task = asyncio.create_task(self._run(envelope, on_done), name=envelope.event_id)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, envelope: Envelope, on_done: Callable[[], None]) -> None:
        try:
            await self.process(envelope)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("delivery %s failed; its offset stays uncommitted", envelope.event_id)
            self.metrics.endpoint(envelope.subscription_id).outcome("failed")
        else:
            on_done()
        finally:
            self.slots.release()

    async def drain(self, timeout_s: float) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=timeout_s)
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)

    # -- endpoints

    def endpoint(self, sub: Subscription) -> _Endpoint:
        current = self.endpoints.get(sub.id)
        if current is not None and current.sub == sub:
            return current
        breaker = (
            current.breaker
            if current is not None and current.sub.url == sub.url
            else self.breaker_factory()
        )
        series = self.metrics.endpoint(sub.id)
        series.breaker(breaker.state)
        fresh = _Endpoint(sub, asyncio.Semaphore(sub.max_concurrency), breaker, series)
        if current is not None and breaker is current.breaker:
            fresh.last_failure = current.last_failure
        self.endpoints[sub.id] = fresh
        return fresh

    def subscription(self, sub_id: str) -> Subscription | None:
        for sub in self.watcher.current:
            if sub.id == sub_id:
                return sub
        return None

    # -- one delivery

    async def process(self, envelope: Envelope) -> None:
        sub = self.subscription(envelope.subscription_id)
        if sub is None:
            await self.dead_letter(envelope, Rejected(SUBSCRIPTION_REMOVED, "subscription removed"))
            return
        endpoint = self.endpoint(sub)
        if endpoint.pending >= self.max_pending and self.policy.delays:
            await self.defer(envelope, endpoint)
            return
        endpoint.pending += 1
        try:
            async with endpoint.semaphore:
                allowed = endpoint.breaker.allow(self.clock())
                endpoint.metrics.breaker(endpoint.breaker.state)  # allow may half-open it
                if allowed:
                    result = await self.post(sub, envelope, endpoint.metrics)
                else:
                    self.stats.short_circuited += 1
                    endpoint.metrics.short_circuited()
                    result = endpoint.short_circuited()
        finally:
            endpoint.pending -= 1
        await self.route(envelope, sub, endpoint, result)

    async def post(
        self, sub: Subscription, envelope: Envelope, metrics: EndpointMetrics
    ) -> _Attempt:
        try:
            headers = sign(sub.secrets, envelope.event_id, envelope.body, int(self.clock()))
        except ValueError as exc:
            return _Attempt(0, f"cannot sign: {exc}", None, False)  # status 0: not retryable
        headers["Content-Type"] = "application/json"
        self.stats.attempts += 1
        started = time.perf_counter()
        result = await self._request(sub, envelope, headers)
        metrics.attempt(result.status, time.perf_counter() - started, retry=envelope.attempt > 0)
        return result

    async def _request(
        self, sub: Subscription, envelope: Envelope, headers: dict[str, str]
    ) -> _Attempt:
        assert self.session is not None
        try:
            async with self.session.post(
                sub.url,
                data=envelope.body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=sub.timeout_s),
                allow_redirects=False,
            ) as resp:
                status: int = resp.status
                retry_after = resp.headers.get("Retry-After")
                if 200 <= status <= 299:
                    return _Attempt(status, "", None, True)
                snippet = await resp.content.read(ERROR_SNIPPET_BYTES)
                text = snippet.decode("utf-8", "replace").strip()
                error = f"HTTP {status}" + (f": {text}" if text else "")
                return _Attempt(status, error, retry_after, True)
        except TimeoutError:
            return _Attempt(None, f"timeout after {sub.timeout_s:g} s", None, True)
        except aiohttp.ClientError as exc:
            return _Attempt(None, f"{type(exc).__name__}: {exc}", None, True)

    async def route(
        self, envelope: Envelope, sub: Subscription, endpoint: _Endpoint, result: _Attempt
    ) -> None:
        now = self.clock()
        now_ms = int(now * 1000)
        classification = classify_with_reason(result.status, result.error)
        if result.called:
            status = result.status
            if classification.outcome is Outcome.SUCCESS or (
                status is not None and status < 500 and status != 429
            ):
                endpoint.breaker.record_success()  # it answered: the endpoint is up
            elif status != 429:
                endpoint.breaker.record_failure(now)
                endpoint.last_failure = result
            endpoint.metrics.breaker(endpoint.breaker.state)
        after = envelope.after_attempt(
            url=sub.url, now_ms=now_ms, status=result.status, error=result.error
        )
        retry_after = retry_after_seconds(result.retry_after, now)
        step = next_step(self.policy, after.attempt, classification.outcome, retry_after, self.rng)
        if step.action is Action.DONE:
            self.stats.delivered += 1
            latency_ms = float(now_ms - envelope.created_at_ms) if envelope.created_at_ms else None
            if latency_ms is not None:
                self.stats.latencies_ms.append(latency_ms)
            endpoint.metrics.delivered(None if latency_ms is None else latency_ms / 1000)
            return
        if step.action is Action.DELIVER_LATER and step.retry_level is not None:
            due = replace(after, due_ms=now_ms + math.ceil(step.delay_s * 1000))
            await self.send(retry_topic(self.settings, step.retry_level), due)
            self.stats.retried += 1
            endpoint.metrics.outcome("retried")
            log.debug("%s: %s, retry level %d", after.event_id, result.error, step.retry_level)
            return
        code = NOT_RETRYABLE if classification.outcome is Outcome.GIVE_UP else ATTEMPTS_EXHAUSTED
        detail = f"{step.reason}: {classification.reason}"
        if result.circuit:
            detail += f"; not called, {result.circuit}"
        await self.dead_letter(after, Rejected(code, detail))

    async def defer(self, envelope: Envelope, endpoint: _Endpoint) -> None:
        """Hand a delivery to the retry topic without an attempt (its endpoint is saturated)."""
        level = min(max(envelope.attempt - 1, 0), len(self.policy.delays) - 1)
        delay = self.policy.delays[level] * (1 + self.rng.uniform(0, self.policy.jitter))
        due = replace(
            envelope,
            due_ms=self.now_ms() + math.ceil(delay * 1000),
            last_error=f"deferred: {endpoint.pending} deliveries pending to this endpoint",
        )
        await self.send(retry_topic(self.settings, level), due)
        self.stats.deferred += 1
        endpoint.metrics.outcome("deferred")

    async def dead_letter(self, envelope: Envelope, rejected: Rejected) -> None:
        letter = envelope_dead_letter(replace(envelope, due_ms=0), rejected, self.now_ms())
        record = dead_letter_record(letter)
        await self.produce(dlq_topic(self.settings), record.key, record.value, record.headers)
        self.stats.dead_lettered += 1
        self.metrics.endpoint(envelope.subscription_id).outcome("dead_lettered")
        log.warning(
            "dead letter %s after %d attempt(s): %s (%s)",
            envelope.event_id,
            envelope.attempt,
            rejected.detail,
            envelope.last_error or "-",
        )

    async def send(self, topic: str, envelope: Envelope) -> None:
        await self.produce(topic, envelope.event_id.encode(), encode(envelope))

    async def produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> None:
        """Produce until acknowledged (the offset is committed only after); gives up on stop."""
        delay = 0.1
        while True:
            try:
                await self.producer.send_and_wait(
                    topic, value, key=key, headers=list(headers) or None
                )
                return
            except KafkaError as exc:
                if self.stop.is_set():
                    raise
                log.warning("cannot produce to %s (%s); retrying in %.1f s", topic, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


# ---------------------------------------------------------------- consumers


class _Partitions(ConsumerRebalanceListener):  # type: ignore[misc]
    """Offset trackers (and, for retry levels, held back records) of the assigned partitions."""

    def __init__(self) -> None:
        self.trackers: dict[Any, OffsetTracker] = {}
        self.committed: dict[Any, int] = {}
        self.waiting: dict[Any, deque[tuple[int, Envelope]]] = {}
        self.consumer: Any = None

    def tracker(self, tp: Any) -> OffsetTracker:
        tracker = self.trackers.get(tp)
        if tracker is None:
            tracker = self.trackers[tp] = OffsetTracker()
        return tracker

    async def commit(self) -> None:
        offsets = {}
        for tp, tracker in self.trackers.items():
            position = tracker.committable()
            if position is not None and position > self.committed.get(tp, -1):
                offsets[tp] = position
        if not offsets:
            return
        try:
            await self.consumer.commit(offsets)
        except KafkaError as exc:  # e.g. a rebalance is in progress: commit again later
            log.warning("offset commit failed: %s", exc)
            return
        self.committed.update(offsets)

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.commit()
        for tp in revoked:
            self.trackers.pop(tp, None)
            self.committed.pop(tp, None)
            self.waiting.pop(tp, None)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        for tp in assigned:
            self.trackers[tp] = OffsetTracker()
            self.committed.pop(tp, None)
            self.waiting.pop(tp, None)


def _consumer(settings: Settings, group: str) -> Any:
    return AIOKafkaConsumer(
        **aiokafka_config(
            settings,
            group_id=group,
            client_id=group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a new group delivers what is already on the topic
            fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
            max_poll_records=500,
            # alerts of a worker transaction that aborted are never read, hence never delivered
            isolation_level="read_committed",
        )
    )


def _alert_envelopes(sink: _Sink, record: Any) -> list[Envelope]:
    alert = Alert()
    try:
        alert.ParseFromString(record.value or b"")
    except DecodeError as exc:
        sink.stats.skipped += 1
        sink.metrics.undecodable.labels("alert").inc()
        log.error("undecodable alert at %s[%d]@%d: %s", record.topic, record.partition,
                  record.offset, exc)  # fmt: skip
        return []
    alert_id = alert.alert_id or f"{record.topic}[{record.partition}]@{record.offset}"
    matching = [sub for sub in sink.watcher.current if sub.matches(alert)]
    if not matching:
        return []
    body = to_json(alert).encode()
    return [
        Envelope(
            event_id=event_id_for(alert_id, sub.id),
            subscription_id=sub.id,
            alert_id=alert_id,
            body=body,
            created_at_ms=alert.created_at_ms,
            url=sub.url,
            source_topic=record.topic,
            source_partition=record.partition,
            source_offset=record.offset,
        )
        for sub in matching
    ]


def _done(tracker: OffsetTracker, offset: int) -> Callable[[], None]:
    return lambda: tracker.done(offset)


async def _consume_alerts(sink: _Sink, consumer: Any, parts: _Partitions) -> None:
    while not sink.stop.is_set():
        batch = await consumer.getmany(timeout_ms=POLL_MS)
        for tp, records in batch.items():
            tracker = parts.tracker(tp)
            for record in records:
                envelopes = _alert_envelopes(sink, record)
                tracker.add(record.offset, len(envelopes))
                for envelope in envelopes:
                    await sink.spawn(envelope, _done(tracker, record.offset))
        await parts.commit()


async def _consume_retries(sink: _Sink, consumer: Any, parts: _Partitions, level: int) -> None:
    while not sink.stop.is_set():
        now_ms = sink.now_ms()
        next_due: int | None = None
        for tp in list(parts.waiting):
            held = parts.waiting[tp]
            while held and held[0][1].due_ms <= now_ms:
                offset, envelope = held.popleft()
                tracker = parts.tracker(tp)
                tracker.add(offset, 1)
                await sink.spawn(envelope, _done(tracker, offset))
            if held:
                due = held[0][1].due_ms
                next_due = due if next_due is None else min(next_due, due)
            else:
                del parts.waiting[tp]
                if tp in consumer.assignment():
                    consumer.resume(tp)
        timeout_ms = POLL_MS if next_due is None else max(1, min(POLL_MS, next_due - now_ms))
        batch = await consumer.getmany(timeout_ms=timeout_ms)
        now_ms = sink.now_ms()
        for tp, records in batch.items():
            tracker = parts.tracker(tp)
            for record in records:
                try:
                    envelope = decode(record.value)
                except ValueError as exc:
                    sink.stats.skipped += 1
                    sink.metrics.undecodable.labels("envelope").inc()
                    log.error("bad envelope at %s[%d]@%d: %s", record.topic, record.partition,
                              record.offset, exc)  # fmt: skip
                    if tp in parts.waiting:
                        continue  # skipped when its turn comes: nothing to deliver
                    tracker.add(record.offset, 0)
                    continue
                queue = parts.waiting.get(tp)
                if queue is None and envelope.due_ms > now_ms:
                    queue = parts.waiting[tp] = deque()
                    consumer.pause(tp)
                if queue is not None:
                    queue.append((record.offset, envelope))
                    continue
                tracker.add(record.offset, 1)
                await sink.spawn(envelope, _done(tracker, record.offset))
        await parts.commit()


async def _wait_assigned(consumers: Sequence[Any], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(c.assignment() for c in consumers):
        if time.monotonic() > deadline:
            log.warning("webhook consumers still without partitions after %.0f s", timeout_s)
            return
        await asyncio.sleep(0.02)


async def _watch(
    watcher: SubscriptionWatcher,
    stop: asyncio.Event,
    stats: WebhookStats,
    metrics: WebhookMetrics,
) -> None:
    ok, errors = metrics.reloads.labels("ok"), metrics.reloads.labels("error")
    seen = (watcher.reloads, watcher.errors)
    while not stop.is_set():
        watcher.poll()
        ok.inc(watcher.reloads - seen[0])
        errors.inc(watcher.errors - seen[1])
        seen = stats.reloads, stats.reload_errors = watcher.reloads, watcher.errors
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(0.25, watcher.interval_s))


async def run_webhooks(
    settings: Settings,
    subscriptions_path: Path,
    *,
    stop: asyncio.Event,
    ready: asyncio.Event | None = None,
    policy: RetryPolicy = RetryPolicy(),  # noqa: B008 - frozen, so a shared default is safe
    clock: Callable[[], float] = time.time,
    stats: WebhookStats | None = None,
    metrics: WebhookMetrics | None = None,
    max_in_flight: int = 1000,
    max_pending_per_endpoint: int = 200,
    breaker_threshold: int = 5,
    breaker_reset_s: float = 30.0,
    reload_interval_s: float = 1.0,
    drain_timeout_s: float = 10.0,
    rng: random.Random | None = None,
) -> None:
    """Deliver alerts to the subscriptions in ``subscriptions_path`` until ``stop`` is set.

    Creates the sink's topics, joins the consumer groups, sets ``ready`` once every consumer has
    its partitions. On stop, in-flight deliveries get ``drain_timeout_s`` to finish; then the
    finished ones are committed (the rest are delivered again by the next run). ``stats``, when
    given, is updated as the sink runs; ``metrics`` (default: this process's shared
    ``fraud.metrics.webhook_metrics()``) too. ``SubscriptionError`` when the file is invalid at
    start.
    """
    fetch_backoff.install()
    stats = stats if stats is not None else WebhookStats()
    watcher = SubscriptionWatcher(subscriptions_path, interval_s=reload_interval_s)
    await asyncio.to_thread(ensure_topics, settings, sink_topics(settings, policy))
    sink = _Sink(
        settings,
        watcher,
        policy=policy,
        clock=clock,
        stats=stats,
        metrics=metrics if metrics is not None else webhook_metrics(),
        stop=stop,
        rng=rng or random.Random(),
        max_in_flight=max_in_flight,
        max_pending_per_endpoint=max_pending_per_endpoint,
        breaker_factory=lambda: CircuitBreaker(breaker_threshold, breaker_reset_s),
    )
    main = _consumer(settings, group_id(settings))
    main_parts = _Partitions()
    main_parts.consumer = main
    main.subscribe([settings.topic_names.alerts], listener=main_parts)
    retries: list[tuple[Any, _Partitions, int]] = []
    for level in range(len(policy.delays)):
        consumer = _consumer(settings, retry_group_id(settings, level))
        parts = _Partitions()
        parts.consumer = consumer
        consumer.subscribe([retry_topic(settings, level)], listener=parts)
        retries.append((consumer, parts, level))
    consumers = [main, *(c for c, _, _ in retries)]
    started: list[Any] = []
    loops: list[asyncio.Task[None]] = []
    try:
        await sink.start()
        for consumer in consumers:
            await consumer.start()
            started.append(consumer)
        await _wait_assigned(consumers, timeout_s=30.0)
        log.info(
            "webhooks: %d subscription(s) %s, %d retry level(s), group %s",
            len(watcher.current),
            [s.id for s in watcher.current],
            len(policy.delays),
            group_id(settings),
        )
        loops = [
            asyncio.create_task(_consume_alerts(sink, main, main_parts), name="alerts"),
            *(
                asyncio.create_task(_consume_retries(sink, c, p, lvl), name=f"retry-{lvl}")
                for c, p, lvl in retries
            ),
            asyncio.create_task(_watch(watcher, stop, stats, sink.metrics), name="subscriptions"),
        ]
        if ready is not None:
            ready.set()
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopped, *loops], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        for task in done:
            error = None if task is stopped else task.exception()
            if error is not None:
                raise error
    finally:
        stop.set()
        # consumer loops end within one poll; in-flight deliveries get drain_timeout_s
        if loops:
            await asyncio.wait(loops, timeout=2 * POLL_MS / 1000 + drain_timeout_s)
        await sink.drain(drain_timeout_s)
        for task in loops:
            task.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        for parts in [main_parts, *(p for _, p, _ in retries)]:
            if parts.consumer in started:
                await parts.commit()
        for consumer in started:
            with contextlib.suppress(KafkaError):
                await consumer.stop()
        await sink.close()
        log.info(stats.summary())


def serve_webhooks(settings: Settings, subscriptions_path: Path) -> int:
    """Run the webhook sink until SIGTERM or SIGINT; 0 after a clean stop.

    ``SubscriptionError`` (bad file) and ``BrokerError`` (Kafka unreachable) propagate for the
    CLI to report.
    """

    run_until_signalled(lambda stop: run_webhooks(settings, subscriptions_path, stop=stop))
    return 0
