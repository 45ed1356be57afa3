"""The webhook dead letters: list them, and re-drive them to the first retry level (``fraud dlq``).

A dead letter on ``{alerts}-webhooks-dlq`` is a ``fraud.v1.DeadLetter`` (reason code, detail,
the alert's topic, partition and offset) whose payload is the delivery's ``Envelope``: ``attempt``,
first/last attempt times, last status and error, and the exact body.

Re-drive publishes each matching letter to ``{alerts}-webhooks-retry-0`` with ``attempt`` reset
to 0 and due now; the running sink delivers it (with the full retry schedule again) under the
same event id, so a receiver that already has it de-duplicates.

**Running it twice does not re-send**: after the re-published letters are acknowledged, a marker
per letter goes to the compacted topic ``{alerts}-webhooks-dlq-redriven`` (the markers and the
DLQ reading are ``fraud.sinks.redrive``, shared with the notifier's re-drive); ``redrive`` and
``list_dead_letters`` skip letters with a marker. A delivery that fails again becomes a *new*
dead letter (new offset), which can be re-driven again. A crash between the re-publish and the
marker can re-drive a letter twice; the event id covers that.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from fraud.broker import ensure_topics
from fraud.contracts.dead_letter import DeadLetter, decode_dead_letter
from fraud.kafka_config import make_producer
from fraud.settings import Settings
from fraud.sinks.redrive import MarkerWriter, marker_key, read_all, redriven_keys
from fraud.sinks.retry import RetryPolicy
from fraud.sinks.webhooks.envelope import Envelope, encode, envelope_of
from fraud.sinks.webhooks.service import dlq_topic, redriven_topic, retry_topic, sink_topics

__all__ = ["DeadLetterEntry", "list_dead_letters", "redrive"]


@dataclass(frozen=True)
class DeadLetterEntry:
    """One dead letter, the envelope it carries, and where it is in the DLQ topic."""

    partition: int
    offset: int
    letter: DeadLetter
    envelope: Envelope
    redriven: bool = False

    @property
    def marker_key(self) -> str:
        return marker_key(self.partition, self.offset)

    def summary(self) -> str:
        e = self.envelope
        took = (e.last_attempt_ms - e.first_attempt_ms) / 1000 if e.first_attempt_ms else 0.0
        state = " (re-driven)" if self.redriven else ""
        return (
            f"{self.partition}:{self.offset} {e.event_id} -> {e.subscription_id} {e.url} "
            f"attempts={e.attempt} over {took:.1f} s reason={self.letter.reason} "
            f"detail={self.letter.detail!r} last_error={e.last_error!r}{state}"
        )


def _matches(envelope: Envelope, endpoint: str | None, event_id: str | None) -> bool:
    if endpoint is not None and endpoint not in (envelope.subscription_id, envelope.url):
        return False
    return event_id is None or event_id in (envelope.event_id, envelope.alert_id)


def list_dead_letters(
    settings: Settings,
    *,
    endpoint: str | None = None,
    event_id: str | None = None,
    include_redriven: bool = False,
    limit: int | None = None,
    timeout_s: float = 10.0,
) -> list[DeadLetterEntry]:
    """Dead letters in DLQ order, optionally only those of ``endpoint`` (subscription id or URL)
    or ``event_id`` (an event id or an alert id). Re-driven letters only with
    ``include_redriven``. Records that are not a webhook dead letter are skipped.
    """
    redriven = redriven_keys(settings, redriven_topic(settings), timeout_s)
    out: list[DeadLetterEntry] = []
    for msg in read_all(settings, dlq_topic(settings), timeout_s):
        try:
            letter = decode_dead_letter(msg.value())
            envelope = envelope_of(letter)
        except ValueError:
            continue
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        entry = DeadLetterEntry(partition, offset, letter, envelope)
        entry = replace(entry, redriven=entry.marker_key in redriven)
        if entry.redriven and not include_redriven:
            continue
        if not _matches(envelope, endpoint, event_id):
            continue
        out.append(entry)
        if limit is not None and len(out) >= limit:
            break
    return out


def redrive(
    settings: Settings,
    *,
    endpoint: str | None = None,
    event_id: str | None = None,
    all: bool = False,
    clock: Callable[[], float] = time.time,
    timeout_s: float = 10.0,
) -> int:
    """Re-publish the matching, not yet re-driven dead letters to retry level 0; their count.

    One of ``endpoint``, ``event_id`` or ``all=True`` is required (``ValueError`` otherwise), so
    a bare call cannot re-send everything by accident. Filters combine (both must match).
    """
    if not all and endpoint is None and event_id is None:
        raise ValueError("redrive needs an endpoint, an event id, or all=True")
    ensure_topics(settings, extra=sink_topics(settings, RetryPolicy(delays=(0.0,))))
    entries = list_dead_letters(settings, endpoint=endpoint, event_id=event_id, timeout_s=timeout_s)
    if not entries:
        return 0
    producer = make_producer(settings, acks="all")
    markers = MarkerWriter(producer, redriven_topic(settings))
    now_ms = int(clock() * 1000)
    target = retry_topic(settings, 0)
    for entry in entries:
        fresh = replace(
            entry.envelope,
            attempt=0,
            first_attempt_ms=0,
            last_attempt_ms=0,
            due_ms=now_ms,
            redrives=entry.envelope.redrives + 1,
        )
        producer.produce(
            target,
            key=fresh.event_id.encode(),
            value=encode(fresh),
            on_delivery=markers.on_delivery,
        )
    markers.flush(timeout_s)  # re-sent first, marked after: never marked but lost
    markers.mark_all(((e.marker_key, e.envelope.event_id) for e in entries), now_ms, timeout_s)
    return len(entries)
