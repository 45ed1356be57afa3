"""What travels on the webhook retry and dead-letter topics, and which offsets may be committed.

``Envelope`` is one pending delivery of one alert to one subscription: the raw body to POST
(exactly the bytes that were signed the first time, so every retry sends the same body), the
stable event id, how many attempts were made and when, the last error, and when it is due next.
It is JSON on the retry topics (``encode``/``decode``), readable with any Kafka tool. On the
dead-letter topic it is the payload of a ``fraud.v1.DeadLetter`` (``payload_type``
``ENVELOPE_PAYLOAD_TYPE``), the format of every dead-letter topic: ``envelope_dead_letter``
builds one and ``envelope_of`` reads the envelope back for a re-drive.

``OffsetTracker`` is the per-partition bookkeeping that lets deliveries finish out of order while
the committed offset never passes a record with an unfinished delivery.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fraud.contracts.dead_letter import DeadLetter, dead_letter
from fraud.contracts.wire import Rejected

__all__ = [
    "ENVELOPE_PAYLOAD_TYPE",
    "ENVELOPE_VERSION",
    "Envelope",
    "OffsetTracker",
    "decode",
    "encode",
    "envelope_dead_letter",
    "envelope_of",
    "event_id_for",
    "percentile",
]

ENVELOPE_VERSION = 1
ENVELOPE_PAYLOAD_TYPE = "fraud.webhooks.Envelope"


def event_id_for(alert_id: str, subscription_id: str) -> str:
    """The event id of an alert's delivery to a subscription: the same on every retry."""
    return f"{alert_id}:{subscription_id}"


@dataclass(frozen=True)
class Envelope:
    """One delivery of one alert to one subscription, between attempts.

    ``attempt`` counts the attempts made so far (0 for a delivery not yet tried, e.g. re-driven
    from the dead letters). Times are ms since the epoch; 0 means "not yet".
    """

    event_id: str
    subscription_id: str
    alert_id: str
    body: bytes
    created_at_ms: int = 0  # the alert's
    url: str = ""  # the endpoint of the last attempt
    attempt: int = 0
    first_attempt_ms: int = 0
    last_attempt_ms: int = 0
    last_status: int | None = None  # HTTP status of the last attempt; None: no response
    last_error: str = ""
    due_ms: int = 0
    # where the alert was read (-1: unknown)
    source_topic: str = ""
    source_partition: int = -1
    source_offset: int = -1
    redrives: int = 0  # times this delivery was re-driven from the dead letters

    def after_attempt(self, *, url: str, now_ms: int, status: int | None, error: str) -> Envelope:
        """This envelope after one more attempt ending with ``status``/``error``."""
        return replace(
            self,
            url=url,
            attempt=self.attempt + 1,
            first_attempt_ms=self.first_attempt_ms or now_ms,
            last_attempt_ms=now_ms,
            last_status=status,
            last_error=error,
        )


_FIELDS = {f.name for f in fields(Envelope)}


def encode(envelope: Envelope) -> bytes:
    """JSON bytes of ``envelope``: the body as text when it is UTF-8 (it is JSON), else base64."""
    doc: dict[str, Any] = asdict(envelope)
    body: bytes = doc.pop("body")
    try:
        doc["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        doc["body_b64"] = base64.b64encode(body).decode("ascii")
    doc["v"] = ENVELOPE_VERSION
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def decode(raw: bytes | None) -> Envelope:
    """The envelope in ``raw``; ``ValueError`` saying why when it is not one."""
    if not raw:
        raise ValueError("empty envelope")
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"envelope is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("envelope is not a JSON object")
    version = doc.pop("v", None)
    if version != ENVELOPE_VERSION:
        raise ValueError(f"unsupported envelope version {version!r}")
    if "body" in doc:
        text = doc.pop("body")
        if not isinstance(text, str):
            raise ValueError("envelope body is not a string")
        body = text.encode("utf-8")
    elif "body_b64" in doc:
        try:
            body = base64.b64decode(doc.pop("body_b64"), validate=True)
        except (binascii.Error, TypeError, ValueError) as exc:
            raise ValueError(f"envelope body_b64 is not base64: {exc}") from None
    else:
        raise ValueError("envelope has no body")
    known = {k: v for k, v in doc.items() if k in _FIELDS}  # newer writers may add fields
    for name in ("event_id", "subscription_id", "alert_id"):
        if not isinstance(known.get(name), str) or not known[name]:
            raise ValueError(f"envelope field {name!r} is missing or not a string")
    try:
        envelope = Envelope(body=body, **known)
    except TypeError as exc:
        raise ValueError(f"bad envelope: {exc}") from None
    for f in fields(Envelope):
        value = getattr(envelope, f.name)
        if f.name == "last_status":
            ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
        elif f.type == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif f.type == "str":
            ok = isinstance(value, str)
        else:
            ok = True
        if not ok:
            raise ValueError(f"envelope field {f.name!r} has the wrong type")
    return envelope


def envelope_dead_letter(envelope: Envelope, rejected: Rejected, now_ms: int) -> DeadLetter:
    """The dead letter of a delivery given up on: the envelope as its payload, keyed by the
    event id, with the alert's coordinates as its source."""
    return dead_letter(
        rejected,
        topic=envelope.source_topic,
        partition=envelope.source_partition,
        offset=envelope.source_offset,
        key=envelope.event_id.encode(),
        payload=encode(envelope),
        now_ms=now_ms,
        payload_type=ENVELOPE_PAYLOAD_TYPE,
    )


def envelope_of(letter: DeadLetter) -> Envelope:
    """The envelope a webhook dead letter carries; ``ValueError`` for any other dead letter."""
    if letter.payload_type != ENVELOPE_PAYLOAD_TYPE:
        raise ValueError(f"dead letter payload is {letter.payload_type or 'a source record'!r}")
    return decode(letter.payload)


class OffsetTracker:
    """Unfinished deliveries of one partition, and the offset that is safe to commit.

    ``add(offset, n)`` registers a record with ``n`` deliveries (0: nothing to deliver) in
    increasing offset order; ``done(offset)`` marks one of them finished (delivered, or handed
    to a retry or dead-letter topic). ``committable()`` is the Kafka commit position: the lowest
    offset that still has an unfinished delivery, or one past the last record added.
    """

    def __init__(self) -> None:
        self._pending: dict[int, int] = {}
        self._order: deque[int] = deque()
        self._next: int | None = None

    def add(self, offset: int, deliveries: int) -> None:
        if deliveries < 0:
            raise ValueError(f"negative delivery count {deliveries}")
        if self._next is not None and offset < self._next:
            raise ValueError(f"offset {offset} added after {self._next - 1}")
        self._next = offset + 1
        if deliveries:
            self._pending[offset] = deliveries
            self._order.append(offset)

    def done(self, offset: int) -> None:
        left = self._pending.get(offset)
        if left is None:
            raise ValueError(f"offset {offset} has no unfinished delivery")
        if left == 1:
            del self._pending[offset]
        else:
            self._pending[offset] = left - 1

    def committable(self) -> int | None:
        """Offset to commit (the next record to read after a restart); None before any add."""
        while self._order and self._order[0] not in self._pending:
            self._order.popleft()
        return self._order[0] if self._order else self._next

    @property
    def unfinished(self) -> int:
        """Deliveries not finished yet."""
        return sum(self._pending.values())

    def __len__(self) -> int:
        """Records with an unfinished delivery."""
        return len(self._pending)


def percentile(samples: Iterable[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``samples`` by the nearest-rank method; NaN when empty."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    if not 0 <= q <= 1:
        raise ValueError(f"quantile must be in [0, 1]: {q}")
    rank = max(1, -(-q * len(ordered) // 1))  # ceil(q * n), at least 1
    return ordered[int(rank) - 1]
