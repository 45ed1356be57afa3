"""The dead-letter format shared by every dead-letter topic: builder, bounds, headers, decoder."""

from __future__ import annotations

from typing import Any

import pytest

from fraud.contracts.dead_letter import (
    MAX_DETAIL_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_REASON_BYTES,
    OMITTED_PAYLOAD,
    bounded,
    dead_letter,
    dead_letter_headers,
    dead_letter_record,
    decode_dead_letter,
)
from fraud.contracts.wire import Rejected
from fraud.v1.dead_letter_pb2 import DeadLetter

NOW_MS = 1_795_000_000_000


def letter_of(rejected: Rejected, **where: Any) -> DeadLetter:
    """``dead_letter`` of ``rejected`` at ``t[0]@0``, no key or value, unless ``where`` says."""
    args: dict[str, Any] = {"topic": "t", "partition": 0, "offset": 0, "key": None,
                            "payload": None, "now_ms": NOW_MS}  # fmt: skip
    return dead_letter(rejected, **(args | where))


def test_dead_letter_carries_reason_source_key_and_payload() -> None:
    payload = b"\xff\xfegarbage"
    rejected = Rejected("decode_error", "not a fraud.v1.Transaction: boom")
    letter = dead_letter(
        rejected,
        topic="transactions",
        partition=3,
        offset=12345,
        key=b"cust-9",
        payload=payload,
        now_ms=NOW_MS,
    )
    assert isinstance(letter, DeadLetter)
    assert letter.reason == "decode_error"
    assert letter.detail == "not a fraud.v1.Transaction: boom"
    assert letter.source_topic == "transactions"
    assert letter.source_partition == 3
    assert letter.source_offset == 12345
    assert letter.key == b"cust-9"
    assert letter.payload == payload
    assert letter.failed_at_ms == NOW_MS
    # survives the wire unchanged
    assert DeadLetter.FromString(letter.SerializeToString()) == letter


def test_dead_letter_of_a_missing_key_and_value_is_empty_bytes() -> None:
    letter = letter_of(Rejected("decode_error", "empty message"))
    assert letter.key == b""
    assert letter.payload == b""


def test_dead_letter_headers() -> None:
    letter = DeadLetter(
        source_topic="prod-transactions",
        source_partition=7,
        source_offset=99,
        reason="invalid_amount",
        detail="amount_minor -5 is negative",
    )
    headers = dead_letter_headers(letter)
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)
    assert dict(headers) == {
        "fraud.contract": b"fraud.v1.DeadLetter",
        "fraud.reason": b"invalid_amount",
        "fraud.source.topic": b"prod-transactions",
        "fraud.source.partition": b"7",
        "fraud.source.offset": b"99",
    }


def test_the_record_is_keyed_like_the_source_with_the_headers() -> None:
    letter = letter_of(Rejected("send_failed", "smtp down"), key=b"C1", payload=b"\x0a\x01x")
    record = dead_letter_record(letter)
    assert record.key == b"C1"
    assert record.headers == dead_letter_headers(letter)
    assert decode_dead_letter(record.value) == letter
    assert dead_letter_record(DeadLetter(reason="r")).key is None  # no key: none on Kafka


def test_round_trip_keeps_the_payload_type_and_every_byte() -> None:
    payload = bytes(range(256)) * 40  # longer than the detail bound: never cut
    letter = letter_of(
        Rejected("attempts_exhausted", "HTTP 500"),
        payload=payload,
        payload_type="fraud.webhooks.Envelope",
    )
    back = decode_dead_letter(letter.SerializeToString())
    assert back.payload == payload and back.payload_type == "fraud.webhooks.Envelope"
    assert back == letter


def test_a_long_detail_is_cut_to_the_bound_with_a_marker() -> None:
    detail = "x" * 500_000
    letter = letter_of(Rejected("r" * 1000, detail))
    assert len(letter.detail.encode()) <= MAX_DETAIL_BYTES
    assert letter.detail.startswith("x" * 1000)
    assert letter.detail.endswith("[truncated: 500000 bytes]")
    assert len(letter.reason.encode()) <= MAX_REASON_BYTES
    assert len(letter.SerializeToString()) < 2 * MAX_DETAIL_BYTES


def test_bounded_leaves_short_text_alone_and_cuts_on_a_character_boundary() -> None:
    assert bounded("short", 100) == "short"
    exact = "é" * 50  # 100 bytes
    assert bounded(exact, 100) == exact
    cut = bounded("é" * 1000, 100)
    assert len(cut.encode()) <= 100
    assert cut.endswith("[truncated: 2000 bytes]")
    assert set(cut.split(" ... ")[0]) == {"é"}  # no half character before the marker


@pytest.mark.parametrize("raw", [None, b"", b"\xff\xfe not protobuf"])
def test_decode_refuses_what_is_not_a_dead_letter(raw: bytes | None) -> None:
    with pytest.raises(ValueError, match=r"dead letter|DeadLetter"):
        decode_dead_letter(raw)


def test_bounded_takes_a_lone_surrogate_and_a_bound_below_the_marker() -> None:
    assert bounded("bad \ud800 id", 100) == "bad ? id"
    assert len(bounded("\ud800" * 50_000, 4096).encode()) <= 4096
    assert len(bounded("x" * 100, 10).encode()) <= 10


def test_an_oversized_payload_is_left_out_and_said_so() -> None:
    big = b"p" * (MAX_PAYLOAD_BYTES + 1)
    letter = letter_of(Rejected("decode_error", "not a Transaction"), payload=big, offset=7)
    assert letter.payload == b""
    assert letter.payload_type == OMITTED_PAYLOAD
    assert f"{len(big)} bytes left out" in letter.detail
    assert (letter.source_topic, letter.source_offset) == ("t", 7)
    assert len(letter.SerializeToString()) < 2 * MAX_DETAIL_BYTES
    kept = letter_of(Rejected("decode_error", ""), payload=big[:MAX_PAYLOAD_BYTES])
    assert kept.payload == big[:MAX_PAYLOAD_BYTES] and kept.payload_type == ""
