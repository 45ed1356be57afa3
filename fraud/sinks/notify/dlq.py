"""The notifier's dead letters: list them, and re-drive them once SMTP or the SMS gateway is fixed
(``fraud dlq --sink notifier``).

A dead letter on ``{prefix}notifier-dlq`` is a ``fraud.v1.DeadLetter`` whose payload is the
source record (an alert, or a JSON event) and whose detail ends with the failed notification's
facts (``; route=R channel=C to=T attempts=N subject='...'``, ``service._failed_detail``). Its
*event id* is the alert's id when the payload is an alert, else the source record's coordinates
``topic:partition:offset`` (which any letter also answers to).

Only ``send_failed`` letters are re-drivable (a ``decode_error`` or ``no_recipient`` letter would
fail the same way again). Re-drive decodes the payload again with the letter's route from the
current config, renders the notification for the letter's recipient and sends it itself through
the configured sender, with the notifier's retries and circuit breaker but without its
de-duplication and rate limit (the letter passed both when it was first tried). Each letter sent
is then marked on ``{prefix}notifier-dlq-redriven`` (the markers are ``fraud.sinks.redrive``,
shared with the webhook re-drive), so a second re-drive sends nothing. A letter whose send fails
again is not marked and stays re-drivable; one whose route is gone from the config, or no longer
sends to that recipient, is counted as not re-drivable and left as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from google.protobuf.message import DecodeError

from fraud.broker import TopicSpec, ensure_topics, topic_config
from fraud.contracts.dead_letter import DeadLetter, decode_dead_letter
from fraud.kafka_config import make_producer
from fraud.settings import Settings
from fraud.sinks.notify.routing import (
    Channel,
    EventError,
    Notification,
    NotifyConfig,
    decode_event,
    plan,
)
from fraud.sinks.notify.service import (
    SEND_FAILED,
    Dispatcher,
    Sender,
    dlq_topic,
    make_senders,
    redriven_topic,
)
from fraud.sinks.redrive import MarkerWriter, marker_key, read_all, redriven_keys
from fraud.v1.alert_pb2 import Alert

__all__ = [
    "NotifierLetter",
    "RedriveResult",
    "Selector",
    "list_dead_letters",
    "parse_letter",
    "rebuild",
    "redrive",
    "select",
]

# The facts _failed_detail appends to a send_failed letter's detail; the subject is last (a repr,
# so it may hold anything) and the reason before them is a sender's error text.
_FACTS = re.compile(
    r"; route=(?P<route>\S+) channel=(?P<channel>\S+) to=(?P<to>.+?) attempts=(?P<attempts>\d+)"
    r" subject=(?P<subject>.*)\Z",
    re.DOTALL,
)
_ROUTE_ONLY = re.compile(r"; route=(?P<route>\S+)\Z")


@dataclass(frozen=True)
class NotifierLetter:
    """One notifier dead letter, where it is in the DLQ, and the facts its detail names."""

    partition: int
    offset: int
    letter: DeadLetter
    event_id: str
    cause: str  # the detail without the facts: why it was not sent
    route: str | None = None
    channel: str | None = None
    recipient: str | None = None
    redriven: bool = False

    @property
    def marker_key(self) -> str:
        return marker_key(self.partition, self.offset)

    @property
    def source(self) -> str:
        lt = self.letter
        return f"{lt.source_topic}:{lt.source_partition}:{lt.source_offset}"

    @property
    def redrivable(self) -> bool:
        """A failed send whose facts are known (other reasons would fail the same way again)."""
        return (
            self.letter.reason == SEND_FAILED
            and self.route is not None
            and self.channel is not None
            and self.recipient is not None
        )

    def summary(self) -> str:
        when = datetime.fromtimestamp(self.letter.failed_at_ms / 1000, tz=UTC)
        state = " (re-driven)" if self.redriven else ""
        return (
            f"{self.partition}:{self.offset} {self.event_id} {self.channel or '-'} "
            f"{self.recipient or '-'} reason={self.letter.reason} "
            f"at={when.isoformat(timespec='seconds').replace('+00:00', 'Z')} "
            f"route={self.route or '-'} cause={self.cause!r}{state}"
        )


def _event_id(letter: DeadLetter) -> str:
    """The alert id when the payload is an alert, else the source record's coordinates."""
    if letter.payload:
        alert = Alert()
        try:
            alert.ParseFromString(letter.payload)
        except DecodeError:
            pass
        else:
            if alert.alert_id:
                return alert.alert_id
    return f"{letter.source_topic}:{letter.source_partition}:{letter.source_offset}"


def parse_letter(partition: int, offset: int, letter: DeadLetter) -> NotifierLetter:
    """The entry of ``letter`` at ``partition``/``offset`` of the DLQ (pure)."""
    detail, event_id = letter.detail, _event_id(letter)
    facts = _FACTS.search(detail)
    if facts is not None:
        return NotifierLetter(
            partition, offset, letter, event_id, detail[: facts.start()],
            facts["route"], facts["channel"], facts["to"],
        )  # fmt: skip
    route = _ROUTE_ONLY.search(detail)
    if route is not None:
        return NotifierLetter(
            partition, offset, letter, event_id, detail[: route.start()], route["route"]
        )
    return NotifierLetter(partition, offset, letter, event_id, detail)


@dataclass(frozen=True)
class Selector:
    """Which letters a list or re-drive is about; unset filters match all, set ones combine."""

    channel: str | None = None
    recipient: str | None = None
    event_id: str | None = None  # an alert id, or a source record's topic:partition:offset

    @property
    def empty(self) -> bool:
        return self.channel is None and self.recipient is None and self.event_id is None

    def matches(self, entry: NotifierLetter) -> bool:
        if self.channel is not None and entry.channel != self.channel:
            return False
        if self.recipient is not None and entry.recipient != self.recipient:
            return False
        return self.event_id is None or self.event_id in (entry.event_id, entry.source)


def select(
    entries: Iterable[NotifierLetter],
    redriven: set[str],
    selector: Selector,
    *,
    include_redriven: bool = False,
) -> list[NotifierLetter]:
    """The entries ``selector`` matches, marked with whether a marker says they were re-driven;
    re-driven ones only with ``include_redriven`` (pure)."""
    out: list[NotifierLetter] = []
    for entry in entries:
        entry = replace(entry, redriven=entry.marker_key in redriven)
        if (include_redriven or not entry.redriven) and selector.matches(entry):
            out.append(entry)
    return out


def rebuild(config: NotifyConfig, entry: NotifierLetter) -> Notification | str:
    """The notification ``entry`` failed to send, rendered again from its payload with the
    current config; else why it cannot be (pure)."""
    if not entry.redrivable:
        return f"reason {entry.letter.reason} is not re-drivable"
    route = next((r for r in config.routes if r.name == entry.route), None)
    if route is None:
        return f"route {entry.route!r} is not in the config"
    if not entry.letter.payload:
        return "the dead letter has no payload (too large?): read it at the source"
    try:
        event = decode_event(route.format, entry.letter.payload)
    except EventError as exc:
        return f"payload not {route.format}: {exc}"
    want = (entry.channel, entry.recipient)
    for item in plan(config, [route], event):
        if isinstance(item, Notification) and (item.channel, item.to) == want:
            return item
    return f"route {route.name!r} no longer sends {entry.channel} to {entry.recipient}"


@dataclass(frozen=True)
class RedriveResult:
    """What one re-drive did: letters sent (and marked), failed again, not re-drivable."""

    sent: int = 0
    failed: int = 0
    not_redrivable: int = 0
    first_error: str | None = None

    def line(self) -> str:
        """One line for the operator; starts ``re-driven: N`` like the webhook re-drive."""
        text = (
            f"re-driven: {self.sent} sent, {self.failed} failed again (still dead-lettered), "
            f"{self.not_redrivable} not re-drivable"
        )
        return text if self.first_error is None else f"{text}; first error: {self.first_error}"


def list_dead_letters(
    settings: Settings,
    selector: Selector = Selector(),
    *,
    include_redriven: bool = False,
    timeout_s: float = 10.0,
) -> list[NotifierLetter]:
    """The notifier's dead letters in DLQ order (every reason), those ``selector`` matches;
    re-driven ones only with ``include_redriven``. Records that are not a dead letter are
    skipped."""
    redriven = redriven_keys(settings, redriven_topic(settings), timeout_s)
    return select(_read_letters(settings, timeout_s), redriven, selector,
                  include_redriven=include_redriven)  # fmt: skip


def _read_letters(settings: Settings, timeout_s: float) -> list[NotifierLetter]:
    out: list[NotifierLetter] = []
    for msg in read_all(settings, dlq_topic(settings), timeout_s):
        try:
            letter = decode_dead_letter(msg.value())
        except ValueError:
            continue
        partition, offset = msg.partition(), msg.offset()
        assert partition is not None and offset is not None
        out.append(parse_letter(partition, offset, letter))
    return out


class _Redrive:
    """Sends the rebuilt notifications one by one and marks each one sent."""

    def __init__(self, dispatcher: Dispatcher, markers: MarkerWriter, now_ms: int) -> None:
        self.dispatcher = dispatcher
        self.markers = markers
        self.now_ms = now_ms

    async def run(self, work: Sequence[tuple[NotifierLetter, Notification | str]]) -> RedriveResult:
        sent = failed = skipped = 0
        first_error: str | None = None
        for entry, item in work:
            if isinstance(item, str):
                skipped += 1
                first_error = first_error or f"{entry.event_id}: {item}"
                continue
            reason = await self.dispatcher.deliver(item)
            if reason is None:
                sent += 1
                self.markers.mark(entry.marker_key, entry.event_id, self.now_ms)
            else:
                failed += 1
                first_error = first_error or f"{entry.event_id}: {reason}"
        return RedriveResult(sent, failed, skipped, first_error)


async def _send_all(
    config: NotifyConfig,
    senders: Mapping[Channel, Sender] | None,
    markers: MarkerWriter,
    work: Sequence[tuple[NotifierLetter, Notification | str]],
    now_ms: int,
) -> RedriveResult:
    active = make_senders(config) if senders is None else senders
    try:
        return await _Redrive(Dispatcher(config, active), markers, now_ms).run(work)
    finally:
        if senders is None:
            for sender in active.values():
                with contextlib.suppress(Exception):
                    await sender.close()


def redrive(
    settings: Settings,
    config: NotifyConfig,
    selector: Selector = Selector(),
    *,
    all: bool = False,
    senders: Mapping[Channel, Sender] | None = None,
    clock: Callable[[], float] = time.time,
    timeout_s: float = 10.0,
) -> RedriveResult:
    """Send the matching, not yet re-driven ``send_failed`` letters again and mark those sent.

    A filter in ``selector`` or ``all=True`` is required (``ValueError`` otherwise), so a bare
    call cannot re-send everything by accident. ``senders`` replaces the configured ones.
    """
    if not all and selector.empty:
        raise ValueError("redrive needs a channel, a recipient, an event id, or all=True")
    marker_topic = redriven_topic(settings)
    compact = topic_config(settings, {"cleanup.policy": "compact"})
    ensure_topics(settings, [TopicSpec(marker_topic, 1, compact)])
    entries = [e for e in list_dead_letters(settings, selector, timeout_s=timeout_s)
               if e.letter.reason == SEND_FAILED]  # fmt: skip
    if not entries:
        return RedriveResult()
    work = [(entry, rebuild(config, entry)) for entry in entries]
    markers = MarkerWriter(make_producer(settings, acks="all"), marker_topic)
    result = asyncio.run(_send_all(config, senders, markers, work, int(clock() * 1000)))
    markers.flush(timeout_s)
    return result
