"""The sinks' dead letters are ``fraud.v1.DeadLetter``, the format of every dead-letter topic:
what the webhook sink and the notifier produce decodes as one, with its headers, and the webhook
envelope comes back out of it for a re-drive. Fake producers and consumers: no broker."""

from __future__ import annotations

import asyncio
import random
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from fraud.contracts.dead_letter import (
    MAX_DETAIL_BYTES,
    dead_letter_headers,
    decode_dead_letter,
)
from fraud.contracts.wire import Rejected
from fraud.metrics import NotifierMetrics, WebhookMetrics
from fraud.settings import Settings
from fraud.sinks.notify.routing import Notification, SendError, parse_config
from fraud.sinks.notify.service import Dispatcher, NotifierStats, _consume
from fraud.sinks.retry import CircuitBreaker, RetryPolicy
from fraud.sinks.webhooks.envelope import (
    ENVELOPE_PAYLOAD_TYPE,
    Envelope,
    envelope_dead_letter,
    envelope_of,
)
from fraud.sinks.webhooks.service import WebhookStats, _Attempt, _Sink, dlq_topic
from fraud.sinks.webhooks.subscriptions import SubscriptionWatcher
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter

NOW_S = 1_795_000_000.0
NOW_MS = int(NOW_S * 1000)


@dataclass
class Sent:
    topic: str
    value: bytes
    key: bytes | None
    headers: list[tuple[str, bytes]] | None


@dataclass
class FakeProducer:
    """``send_and_wait`` of an aiokafka producer; keeps what it was given."""

    sent: list[Sent] = field(default_factory=list)

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.sent.append(Sent(topic, value, key, headers))


def envelope(**extra: object) -> Envelope:
    base = Envelope(
        event_id="alert-1:risk",
        subscription_id="risk",
        alert_id="alert-1",
        body=b'{"alert_id": "alert-1"}',
        url="http://hooks.example.com/risk",
        attempt=3,
        first_attempt_ms=NOW_MS - 900,
        last_attempt_ms=NOW_MS - 100,
        last_status=500,
        last_error="HTTP 500: down",
        source_topic="alerts",
        source_partition=2,
        source_offset=41,
        redrives=1,
    )
    return replace(base, **extra)  # type: ignore[arg-type]


# ---------------------------------------------------------------- webhook envelope letters


def test_a_webhook_dead_letter_carries_the_envelope_and_the_alert_coordinates() -> None:
    env = envelope()
    letter = envelope_dead_letter(env, Rejected("attempts_exhausted", "3 of 3: HTTP 500"), NOW_MS)
    back = decode_dead_letter(letter.SerializeToString())
    assert (back.source_topic, back.source_partition, back.source_offset) == ("alerts", 2, 41)
    assert (back.reason, back.detail, back.failed_at_ms) == (
        "attempts_exhausted",
        "3 of 3: HTTP 500",
        NOW_MS,
    )
    assert back.key == b"alert-1:risk" and back.payload_type == ENVELOPE_PAYLOAD_TYPE
    assert envelope_of(back) == env  # everything a re-drive needs


def test_envelope_of_refuses_a_dead_letter_of_another_kind() -> None:
    transaction_letter = DeadLetter(source_topic="transactions", reason="decode_error",
                                    payload=b"\xff")  # fmt: skip
    with pytest.raises(ValueError, match="source record"):
        envelope_of(transaction_letter)
    broken = DeadLetter(payload_type=ENVELOPE_PAYLOAD_TYPE, payload=b"not json")
    with pytest.raises(ValueError, match="not JSON"):
        envelope_of(broken)


# ---------------------------------------------------------------- webhook sink


def webhook_sink(tmp_path: Path, subscriptions: str) -> tuple[_Sink, FakeProducer]:
    path = tmp_path / "subs.toml"
    path.write_text(subscriptions)
    sink = _Sink(
        Settings(),
        SubscriptionWatcher(path),
        policy=RetryPolicy(delays=(0.2, 0.5)),
        clock=lambda: NOW_S,
        stats=WebhookStats(),
        metrics=WebhookMetrics(CollectorRegistry()),
        stop=asyncio.Event(),
        rng=random.Random(0),
        max_in_flight=10,
        max_pending_per_endpoint=10,
        breaker_factory=lambda: CircuitBreaker(5, 30.0),
    )
    producer = FakeProducer()
    sink.producer = producer
    return sink, producer


SUBSCRIPTION = '[[subscription]]\nid = "risk"\nurl = "http://hooks.example.com/risk"\n'
SUBSCRIPTION += 'secrets = ["0123456789abcdef0123456789abcdef"]\n'


def only_dead_letter(producer: FakeProducer) -> tuple[Sent, DeadLetter]:
    [sent] = producer.sent
    assert sent.topic == dlq_topic(Settings())
    letter = decode_dead_letter(sent.value)
    assert sent.key == letter.key == b"alert-1:risk"
    assert sent.headers == dead_letter_headers(letter)
    return sent, letter


def test_the_sink_dead_letters_a_removed_subscription_as_a_dead_letter(tmp_path: Path) -> None:
    sink, producer = webhook_sink(tmp_path, "")
    asyncio.run(sink.process(envelope(subscription_id="risk", due_ms=NOW_MS)))
    _, letter = only_dead_letter(producer)
    assert letter.reason == "subscription_removed" and letter.failed_at_ms == NOW_MS
    assert envelope_of(letter) == envelope(due_ms=0)
    assert sink.stats.dead_lettered == 1


def test_the_sink_dead_letters_a_client_error_with_the_last_attempt(tmp_path: Path) -> None:
    sink, producer = webhook_sink(tmp_path, SUBSCRIPTION)
    [sub] = sink.watcher.current
    fresh = envelope(attempt=0, first_attempt_ms=0, last_attempt_ms=0, last_status=None)
    answer = _Attempt(400, "HTTP 400: nope", None, True)
    asyncio.run(sink.route(fresh, sub, sink.endpoint(sub), answer))
    _, letter = only_dead_letter(producer)
    assert letter.reason == "not_retryable" and "HTTP 400" in letter.detail
    after = envelope_of(letter)
    assert (after.attempt, after.last_status, after.last_error) == (1, 400, "HTTP 400: nope")
    assert after.first_attempt_ms == after.last_attempt_ms == NOW_MS


def test_a_short_circuited_delivery_is_dead_lettered_with_the_last_real_failure(
    tmp_path: Path,
) -> None:
    sink, producer = webhook_sink(tmp_path, SUBSCRIPTION)
    sink.breaker_factory = lambda: CircuitBreaker(1, 30.0)  # one failure opens it
    calls: list[str] = []

    async def always_500(sub: object, env: Envelope, metrics: object) -> _Attempt:
        calls.append(env.event_id)
        return _Attempt(500, "HTTP 500: down", None, True)

    sink.post = always_500  # type: ignore[assignment,method-assign]
    last_try = envelope(attempt=2)  # RetryPolicy(delays=(0.2, 0.5)): the third is the last
    asyncio.run(sink.process(last_try))
    asyncio.run(sink.process(replace(last_try, event_id="alert-2:risk", alert_id="alert-2")))
    assert calls == ["alert-1:risk"]  # the breaker kept the second from the endpoint
    first, second = (decode_dead_letter(sent.value) for sent in producer.sent)
    assert first.reason == second.reason == "attempts_exhausted"
    assert first.detail == "attempts exhausted (3 of 3): HTTP 500 (retryable)"
    assert second.detail == (
        "attempts exhausted (3 of 3): HTTP 500 (retryable); "
        "not called, circuit open after 1 consecutive failures"
    )
    after = envelope_of(second)
    assert after.last_status == 500 and after.last_error.startswith("HTTP 500: down (last answer")
    assert sink.stats.short_circuited == 1


# ---------------------------------------------------------------- notifier


class FailingSender:
    def __init__(self, error: SendError) -> None:
        self.error = error

    async def send(self, notification: Notification) -> None:
        raise self.error

    async def close(self) -> None:
        pass


NOTIFY = """
[smtp]
host = "smtp.example.com"
sender = "fraud@example.com"

[delivery]
attempts = 2
backoff_s = 0.5

[[route]]
name = "desk"
topic = "alerts"
channel = "email"
to = "desk@example.com"
"""


def notifier(error: SendError) -> Dispatcher:
    async def no_sleep(_seconds: float) -> None:
        pass

    return Dispatcher(
        parse_config(tomllib.loads(NOTIFY), {}),
        {"email": FailingSender(error)},
        clock=lambda: NOW_S,
        monotonic=lambda: 0.0,
        sleep=no_sleep,
        metrics=NotifierMetrics(CollectorRegistry()),
    )


@dataclass
class FakeRecord:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = NOW_MS


class FakeConsumer:
    """One batch of records, then ``stop``; keeps the commits."""

    def __init__(self, records: list[FakeRecord], stop: asyncio.Event) -> None:
        self.records = records
        self.stop = stop
        self.commits: list[dict[object, int]] = []

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[object, list[FakeRecord]]:
        batch, self.records = self.records, []
        if not batch:
            self.stop.set()
        return {("alerts", 0): batch} if batch else {}

    def assignment(self) -> set[object]:
        return {("alerts", 0)}

    async def commit(self, offsets: dict[object, int]) -> None:
        self.commits.append(offsets)


def consume(dispatcher: Dispatcher, records: list[FakeRecord]) -> tuple[FakeProducer, FakeConsumer]:
    producer = FakeProducer()

    async def main() -> FakeConsumer:
        stop = asyncio.Event()
        consumer = FakeConsumer(records, stop)
        routes = {"alerts": dispatcher.config.routes}
        await _consume(consumer, producer, dispatcher, routes, "notifier-dlq", stop, None,  # type: ignore[arg-type]
                       NotifierStats())  # fmt: skip
        return consumer

    return producer, asyncio.run(main())


def test_the_notifier_writes_dead_letters_of_the_failed_notification() -> None:
    alert = Alert(alert_id="T1/block", type="fraud.block").SerializeToString()
    d = notifier(SendError("smtp connection failed", retryable=True))
    producer, consumer = consume(
        d, [FakeRecord("alerts", 0, 7, b"C1", alert), FakeRecord("alerts", 0, 8, None, b"\xff")]
    )
    assert [s.topic for s in producer.sent] == ["notifier-dlq", "notifier-dlq"]
    failed, undecodable = (decode_dead_letter(s.value) for s in producer.sent)
    assert (failed.reason, failed.source_offset, failed.key) == ("send_failed", 7, b"C1")
    assert failed.payload == alert  # the source record's value, unchanged
    assert failed.payload_type == "" and failed.failed_at_ms == NOW_MS
    assert failed.detail.startswith("smtp connection failed (after 2 attempts);")
    for fact in ("route=desk", "channel=email", "to=desk@example.com", "attempts=2"):
        assert fact in failed.detail
    assert producer.sent[0].key == b"C1" and producer.sent[0].headers == dead_letter_headers(failed)
    assert (undecodable.reason, undecodable.source_offset) == ("decode_error", 8)
    assert "routes=desk" in undecodable.detail and undecodable.payload == b"\xff"
    assert producer.sent[1].key is None
    assert consumer.commits == [{("alerts", 0): 9}]  # committed after the dead letters


def test_a_huge_failure_reason_is_cut_to_the_bound() -> None:
    d = notifier(SendError("x" * 500_000, retryable=False))
    alert = Alert(alert_id="T1/block", type="fraud.block").SerializeToString()
    producer, _ = consume(d, [FakeRecord("alerts", 0, 0, b"C1", alert)])
    [letter] = [decode_dead_letter(s.value) for s in producer.sent]
    assert len(letter.detail.encode()) <= MAX_DETAIL_BYTES
    assert letter.detail.endswith("bytes]")
    assert len(producer.sent[0].value) < MAX_DETAIL_BYTES + len(alert) + 200
