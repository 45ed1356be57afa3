"""The one dead-letter format of every dead-letter topic: ``fraud.v1.DeadLetter`` (protobuf).

The worker (undecodable or invalid transactions), the gateway, the webhook sink and the notifier
all write the same message: a short reason code, a human-readable detail, where the failed
record was read (topic, partition, offset), its key and its bytes. The reason and the source
coordinates are also Kafka headers (``fraud.reason``, ``fraud.source.*``), for tools that route
or count without decoding the body, next to the ``fraud.contract`` header naming the type.

A dead letter stays well below a topic's maximum message size: ``reason`` and ``detail`` are cut
to ``MAX_REASON_BYTES`` and ``MAX_DETAIL_BYTES`` (UTF-8) with a marker saying how long they were.
The payload is kept whole, because re-driving needs it exactly, unless the dead letter would
then pass ``MAX_PAYLOAD_BYTES`` (below librdkafka's default ``message.max.bytes`` of 1,000,000
with room for the rest): it is then left out, ``payload_type`` says so and the source
coordinates point to the original. Nothing here touches Kafka.
"""

from __future__ import annotations

from typing import NamedTuple

from google.protobuf.message import DecodeError

from fraud.contracts.partitioning import CONTRACT_HEADER, DEAD_LETTER
from fraud.contracts.wire import Rejected
from fraud.v1.dead_letter_pb2 import DeadLetter

__all__ = [
    "MAX_DETAIL_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_REASON_BYTES",
    "OMITTED_PAYLOAD",
    "DeadLetter",
    "DeadLetterRecord",
    "bounded",
    "dead_letter",
    "dead_letter_headers",
    "dead_letter_record",
    "decode_dead_letter",
]

MAX_DETAIL_BYTES = 4096
MAX_REASON_BYTES = 128
MAX_PAYLOAD_BYTES = 900_000
OMITTED_PAYLOAD = "omitted:too_large"


class DeadLetterRecord(NamedTuple):
    """What to produce for one dead letter: key, value and headers (any Kafka client)."""

    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def bounded(text: str, limit: int) -> str:
    """``text`` when its UTF-8 form fits in ``limit`` bytes; else its start and a marker, together
    at most ``limit`` bytes, cut on a character boundary."""
    # "replace": a lone surrogate (JSON "\ud800") must not make the dead letter fail
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return encoded.decode("utf-8")
    marker = f" ... [truncated: {len(encoded)} bytes]".encode()
    if len(marker) >= limit:
        return marker[:limit].decode("utf-8", "ignore")
    return encoded[: limit - len(marker)].decode("utf-8", "ignore") + marker.decode()


def dead_letter(
    rejected: Rejected,
    *,
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    payload: bytes | None,
    now_ms: int,
    payload_type: str = "",
) -> DeadLetter:
    """The dead letter of the record at ``topic[partition]@offset``, refused for ``rejected``.

    ``payload`` is the record's value unchanged, unless ``payload_type`` names what it is
    instead (for example the webhook sink's retry envelope). A payload over
    ``MAX_PAYLOAD_BYTES`` is left out (``payload_type`` ``OMITTED_PAYLOAD``).
    """
    detail = rejected.detail
    if payload is not None and len(payload) > MAX_PAYLOAD_BYTES:
        detail = f"payload of {len(payload)} bytes left out (read it at the source); {detail}"
        payload, payload_type = None, OMITTED_PAYLOAD
    return DeadLetter(
        source_topic=topic,
        source_partition=partition,
        source_offset=offset,
        reason=bounded(rejected.reason, MAX_REASON_BYTES),
        detail=bounded(detail, MAX_DETAIL_BYTES),
        key=key or b"",
        payload=payload or b"",
        failed_at_ms=now_ms,
        payload_type=payload_type,
    )


def dead_letter_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    """The type, the reason and the source coordinates as Kafka headers, for tools that skip
    the body."""
    return [
        (CONTRACT_HEADER, DEAD_LETTER),
        ("fraud.reason", letter.reason.encode()),
        ("fraud.source.topic", letter.source_topic.encode()),
        ("fraud.source.partition", str(letter.source_partition).encode()),
        ("fraud.source.offset", str(letter.source_offset).encode()),
    ]


def dead_letter_record(letter: DeadLetter) -> DeadLetterRecord:
    """The Kafka record of ``letter``: keyed like the source record, headers as above."""
    return DeadLetterRecord(
        letter.key or None, letter.SerializeToString(), dead_letter_headers(letter)
    )


def decode_dead_letter(raw: bytes | None) -> DeadLetter:
    """The dead letter in ``raw``; ``ValueError`` saying why when it is not one."""
    if not raw:
        raise ValueError("empty dead letter")
    letter = DeadLetter()
    try:
        letter.ParseFromString(raw)
    except DecodeError as exc:
        raise ValueError(f"not a fraud.v1.DeadLetter: {exc}") from None
    return letter
