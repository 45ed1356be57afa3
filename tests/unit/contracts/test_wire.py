"""Decoding and validation of transactions, dead letters, JSON, and the generated protobuf code."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraud.contracts.partitioning import LABEL, TRANSACTION
from fraud.contracts.units import DAY_MS, HOUR_MS
from fraud.contracts.wire import (
    MAX_ID_LENGTH,
    Rejected,
    decision_summary,
    decode_as,
    decode_transaction,
    parse_label,
    parse_transaction,
    to_json,
    validate_transaction,
)
from fraud.protogen import generate
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import Action, Decision
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction, TransactionBatch

ROOT = Path(__file__).resolve().parents[3]
NOW_MS = int(datetime(2026, 11, 25, 12, 0, tzinfo=UTC).timestamp() * 1000)
MAX_FUTURE_MS = 2 * DAY_MS


def valid_tx(**changes: object) -> Transaction:
    tx = Transaction(
        transaction_id="tx-1",
        customer_id="cust-1",
        terminal_id="term-1",
        amount_minor=1234,
        currency="EUR",
        event_time_ms=NOW_MS - HOUR_MS,
        utc_offset_minutes=60,
        latitude=48.85,
        longitude=2.35,
        device_id="dev-1",
    )
    for name, value in changes.items():
        setattr(tx, name, value)
    return tx


def check(tx: Transaction) -> Rejected | None:
    return validate_transaction(tx, NOW_MS, MAX_FUTURE_MS)


# --- decoding ---------------------------------------------------------------------------------


def test_valid_transaction_round_trips_and_passes() -> None:
    tx = valid_tx()
    decoded = decode_transaction(tx.SerializeToString())
    assert isinstance(decoded, Transaction)
    assert decoded == tx
    assert check(decoded) is None
    parsed = parse_transaction(tx.SerializeToString(), NOW_MS, MAX_FUTURE_MS)
    assert parsed == tx


def test_valid_transaction_without_location_passes() -> None:
    tx = valid_tx()
    tx.ClearField("latitude")
    tx.ClearField("longitude")
    assert check(tx) is None


@pytest.mark.parametrize("value", [b"", None])
def test_empty_message_is_a_decode_error(value: bytes | None) -> None:
    result = decode_transaction(value)
    assert isinstance(result, Rejected)
    assert result.reason == "decode_error"
    assert "empty" in result.detail
    assert parse_transaction(value, NOW_MS, MAX_FUTURE_MS) == result


@pytest.mark.parametrize(
    "value",
    [
        b"\xff\xff\xff\xff",  # a tag with an invalid wire type
        b"\x0a\x05ab",  # a length-delimited field longer than the message
        b"\x0a\x02\xff\xfe",  # transaction_id is not UTF-8
        b"hello world",
    ],
)
def test_garbage_bytes_are_a_decode_error_without_json_hint(value: bytes) -> None:
    result = decode_transaction(value)
    assert isinstance(result, Rejected)
    assert result.reason == "decode_error"
    assert "fraud.v1.Transaction" in result.detail
    assert "JSON" not in result.detail


@pytest.mark.parametrize(
    "value",
    [
        json.dumps({"transaction_id": "tx-1", "customer_id": "c", "amount_minor": 5}).encode(),
        b'[{"transaction_id": "tx-1"}]',
    ],
)
def test_json_payload_is_a_decode_error_with_a_json_hint(value: bytes) -> None:
    result = parse_transaction(value, NOW_MS, MAX_FUTURE_MS)
    assert isinstance(result, Rejected)
    assert result.reason == "decode_error"
    assert "looks like JSON" in result.detail
    assert "protobuf" in result.detail


# --- records without the fraud.contract header ------------------------------------------------

# Field 11 as a varint: a field fraud.v1.Transaction does not have (a newer producer's, say).
FIELD_11 = b"\x58\x01"


def a_decision(**changes: object) -> Decision:
    """A Decision as the worker sends it, but without a score: fields 1-7 line up with a
    Transaction's, so only its features (9, a map where Transaction has a double) and the fields
    after 10 tell the two apart."""
    fields: dict[str, Any] = dict(
        transaction_id="tx-1", customer_id="cust-1", terminal_id="term-1", amount_minor=1234,
        currency="EUR", event_time_ms=NOW_MS - HOUR_MS, action=Action.ALLOW,
        features={"count": 1.0}, rules_fired=["r1"], rules_version="v1", decided_at_ms=NOW_MS,
    )  # fmt: skip
    return Decision(**(fields | changes))


def test_a_headerless_decision_is_refused_as_another_type() -> None:
    value = a_decision().SerializeToString()
    assert Transaction.FromString(value).currency == "EUR"  # protobuf alone takes it
    result = parse_transaction(value, NOW_MS, MAX_FUTURE_MS)
    assert isinstance(result, Rejected)
    assert result.reason == "wrong_type"
    assert result.detail == (
        "no fraud.contract header, and fields 9 (of another wire type), 11, 15 are not in "
        "fraud.v1.Transaction (is it another message type?); set the header to decode it as "
        "fraud.v1.Transaction"
    )
    # With the header naming it a Transaction, the unknown fields are the producer's business.
    assert isinstance(decode_transaction(value, TRANSACTION), Transaction)


def test_a_decision_with_one_foreign_field_says_field_is() -> None:
    value = a_decision(rules_version="", decided_at_ms=0, rules_fired=[]).SerializeToString()
    result = decode_transaction(value)
    assert isinstance(result, Rejected)
    assert "and field 9 (of another wire type) is not in fraud.v1.Transaction" in result.detail


def test_a_headerless_alert_is_refused() -> None:
    alert = Alert(alert_id="tx-1/review", type="fraud.review", decision=a_decision())
    alert.created_at_ms = NOW_MS
    result = parse_transaction(alert.SerializeToString(), NOW_MS, MAX_FUTURE_MS)
    assert isinstance(result, Rejected)
    # An Alert's four fields all line up with a Transaction's (1-3 strings or bytes, 4 a
    # varint); it never has a currency (5), and its decision, read as terminal_id, may not be
    # UTF-8.
    assert result.reason in ("unknown_currency", "decode_error")


def test_a_headerless_label_on_transactions_is_refused() -> None:
    label = Label(
        transaction_id="tx-1", customer_id="cust-1", terminal_id="term-1", fraud=True,
        transaction_time_ms=NOW_MS - HOUR_MS, event_time_ms=NOW_MS,
    )  # fmt: skip
    result = parse_transaction(label.SerializeToString(), NOW_MS, MAX_FUTURE_MS)
    assert isinstance(result, Rejected)
    assert result.reason == "wrong_type"
    assert "field 5 (of another wire type) is not in fraud.v1.Transaction" in result.detail


@settings(max_examples=300, deadline=None)
@given(
    ids=st.lists(st.text(max_size=12), min_size=5, max_size=5),
    times=st.lists(st.integers(0, 2**62), min_size=3, max_size=3),
    fraud=st.booleans(),
    decision=st.booleans(),
)
def test_no_headerless_alert_or_label_is_a_valid_transaction(
    ids: list[str], times: list[int], fraud: bool, decision: bool
) -> None:
    # Neither type has a field 5 of a Transaction's wire type, so the currency is always
    # missing: if a new field made one a valid Transaction, this says so.
    alert = Alert(alert_id=ids[0], type=ids[1], created_at_ms=times[0])
    if decision:
        alert.decision.CopyFrom(a_decision(transaction_id=ids[2], customer_id=ids[3]))
    label = Label(
        transaction_id=ids[0], customer_id=ids[1], terminal_id=ids[2], fraud=fraud,
        transaction_time_ms=times[1], event_time_ms=times[2],
    )  # fmt: skip
    for message in (alert, label):
        result = parse_transaction(message.SerializeToString(), NOW_MS, MAX_FUTURE_MS)
        assert isinstance(result, Rejected), message


def test_a_headered_transaction_with_an_unknown_field_is_accepted() -> None:
    value = valid_tx().SerializeToString() + FIELD_11
    accepted = parse_transaction(value, NOW_MS, MAX_FUTURE_MS, TRANSACTION)
    assert isinstance(accepted, Transaction)
    assert accepted.ListFields() == valid_tx().ListFields()  # and field 11 kept as unknown
    refused = parse_transaction(value, NOW_MS, MAX_FUTURE_MS)
    assert isinstance(refused, Rejected) and refused.reason == "wrong_type"
    assert "field 11 is not in" in refused.detail


def test_a_headerless_plain_transaction_is_accepted() -> None:
    tx = valid_tx()
    assert parse_transaction(tx.SerializeToString(), NOW_MS, MAX_FUTURE_MS) == tx
    # Non-canonical but valid encodings are no unknown fields: a default written out, a field
    # written twice (the last one wins).
    value = b"\x20\x00" + valid_tx(amount_minor=5).SerializeToString() + b"\x20\x07"
    assert parse_transaction(value, NOW_MS, MAX_FUTURE_MS) == valid_tx(amount_minor=7)


def test_a_headerless_label_with_a_foreign_field_is_refused_on_labels() -> None:
    label = Label(transaction_id="tx-1", terminal_id="term-1", fraud=True, event_time_ms=NOW_MS)
    value = label.SerializeToString()
    assert parse_label(value) == label
    tx = valid_tx().SerializeToString()
    refused = parse_label(tx)
    assert isinstance(refused, Rejected) and refused.reason == "wrong_type"
    assert "fields 5 (of another wire type), 7, 8, 9, 10 are not in fraud.v1.Label" in (
        refused.detail
    )
    accepted = parse_label(value + FIELD_11, LABEL)
    assert isinstance(accepted, Label) and accepted.ListFields() == label.ListFields()
    assert parse_label(b"", LABEL) == Rejected(
        "invalid_label", "label needs transaction_id, terminal_id, event_time_ms"
    )


def test_a_long_list_of_foreign_fields_is_cut() -> None:
    value = b"".join(bytes([(n << 3) | 0, 1]) for n in range(1, 16))
    result = decode_as(TransactionBatch, value, None)
    assert isinstance(result, Rejected)
    assert (
        "fields 1 (of another wire type), 2, 3, 4, 5, 6, 7, 8 and 7 more are not in "
        "fraud.v1.TransactionBatch"
    ) in result.detail


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["transaction_id", "customer_id", "terminal_id"])
def test_missing_id_is_rejected(name: str) -> None:
    result = check(valid_tx(**{name: ""}))
    assert result is not None
    assert result.reason == f"missing_{name}"
    # and the same through the bytes path
    parsed = parse_transaction(valid_tx(**{name: ""}).SerializeToString(), NOW_MS, MAX_FUTURE_MS)
    assert isinstance(parsed, Rejected)
    assert parsed.reason == f"missing_{name}"


@pytest.mark.parametrize("name", ["transaction_id", "customer_id", "terminal_id"])
def test_overlong_id_is_rejected_at_the_limit_plus_one(name: str) -> None:
    assert check(valid_tx(**{name: "x" * MAX_ID_LENGTH})) is None
    result = check(valid_tx(**{name: "x" * (MAX_ID_LENGTH + 1)}))
    assert result is not None
    assert result.reason == f"invalid_{name}"


def test_negative_amount_is_rejected_zero_is_not() -> None:
    result = check(valid_tx(amount_minor=-1))
    assert result is not None
    assert result.reason == "invalid_amount"
    assert "-1" in result.detail
    assert check(valid_tx(amount_minor=0)) is None


@pytest.mark.parametrize("currency", ["", "XYZ", "eur", "EURO", "EU"])
def test_unknown_currency_is_rejected(currency: str) -> None:
    result = check(valid_tx(currency=currency))
    assert result is not None
    assert result.reason == "unknown_currency"


@pytest.mark.parametrize("currency", ["EUR", "USD", "JPY", "BHD", "GBP"])
def test_known_currency_is_accepted(currency: str) -> None:
    assert check(valid_tx(currency=currency)) is None


@pytest.mark.parametrize("event_time_ms", [0, -1, -86_400_000 * 365])
def test_event_time_at_or_before_1970_is_rejected(event_time_ms: int) -> None:
    result = check(valid_tx(event_time_ms=event_time_ms))
    assert result is not None
    assert result.reason == "invalid_event_time"


def test_event_time_in_2018_is_valid() -> None:
    t2018 = int(datetime(2018, 4, 1, 9, 30, tzinfo=UTC).timestamp() * 1000)
    assert t2018 == 1_522_575_000_000
    assert check(valid_tx(event_time_ms=t2018)) is None
    assert check(valid_tx(event_time_ms=1)) is None


def test_event_time_too_far_in_the_future_is_rejected() -> None:
    assert check(valid_tx(event_time_ms=NOW_MS + MAX_FUTURE_MS)) is None
    result = check(valid_tx(event_time_ms=NOW_MS + MAX_FUTURE_MS + 1))
    assert result is not None
    assert result.reason == "invalid_event_time"
    assert "future" in result.detail
    # the limit follows the arguments, not a constant
    assert validate_transaction(valid_tx(event_time_ms=NOW_MS + HOUR_MS), NOW_MS, 0) is not None
    assert validate_transaction(valid_tx(event_time_ms=NOW_MS), NOW_MS, 0) is None


@pytest.mark.parametrize("offset", [14 * 60, -14 * 60, 0, 330, -570])
def test_utc_offset_within_14_hours_is_valid(offset: int) -> None:
    assert check(valid_tx(utc_offset_minutes=offset)) is None


@pytest.mark.parametrize("offset", [14 * 60 + 1, -14 * 60 - 1, 100_000])
def test_bad_utc_offset_is_rejected(offset: int) -> None:
    result = check(valid_tx(utc_offset_minutes=offset))
    assert result is not None
    assert result.reason == "invalid_utc_offset"


@pytest.mark.parametrize("keep", ["latitude", "longitude"])
def test_half_a_location_is_rejected(keep: str) -> None:
    tx = valid_tx()
    tx.ClearField("longitude" if keep == "latitude" else "latitude")
    assert tx.HasField(keep)
    result = check(tx)
    assert result is not None
    assert result.reason == "invalid_location"


def test_location_at_zero_zero_is_present_and_valid() -> None:
    tx = valid_tx(latitude=0.0, longitude=0.0)
    assert check(tx) is None
    # presence survives the wire, so (0, 0) minus longitude is still half a location
    decoded = decode_transaction(tx.SerializeToString())
    assert isinstance(decoded, Transaction)
    decoded.ClearField("longitude")
    rejected = check(decoded)
    assert rejected is not None
    assert rejected.reason == "invalid_location"


@pytest.mark.parametrize(
    ("lat", "lon"),
    [
        (math.nan, 0.0),
        (0.0, math.nan),
        (math.inf, 0.0),
        (0.0, -math.inf),
        (90.0001, 0.0),
        (-90.5, 0.0),
        (0.0, 180.0001),
        (0.0, -181.0),
    ],
)
def test_bad_coordinates_are_rejected(lat: float, lon: float) -> None:
    result = check(valid_tx(latitude=lat, longitude=lon))
    assert result is not None
    assert result.reason == "invalid_location"


@pytest.mark.parametrize(("lat", "lon"), [(90.0, 180.0), (-90.0, -180.0), (-33.9, 151.2)])
def test_edge_coordinates_are_valid(lat: float, lon: float) -> None:
    assert check(valid_tx(latitude=lat, longitude=lon)) is None


# --- dead letters and JSON ----------------------------------------------------------------------


def test_to_json_is_one_line_with_proto_field_names() -> None:
    decision = Decision(
        transaction_id="tx-1",
        customer_id="cust-1",
        amount_minor=1234,
        currency="EUR",
        event_time_ms=1_522_575_000_000,
        action=Action.REVIEW,
        score=0.5,
        features={"customer_nb_tx_1d": 2.0},
        rules_fired=["AMOUNT_OVER_THRESHOLD"],
    )
    text = to_json(decision)
    assert "\n" not in text
    data = json.loads(text)
    assert data["transaction_id"] == "tx-1"
    assert data["customer_id"] == "cust-1"
    assert int(data["amount_minor"]) == 1234
    assert int(data["event_time_ms"]) == 1_522_575_000_000
    assert data["action"] == "REVIEW"
    assert data["score"] == 0.5
    assert data["features"] == {"customer_nb_tx_1d": 2.0}
    assert data["rules_fired"] == ["AMOUNT_OVER_THRESHOLD"]
    assert "transactionId" not in data
    assert "amountMinor" not in data


def test_to_json_of_a_dead_letter_base64_encodes_bytes() -> None:
    letter = DeadLetter(source_topic="transactions", reason="decode_error", payload=b"\x00\xff")
    data = json.loads(to_json(letter))
    assert data["source_topic"] == "transactions"
    assert data["payload"] == "AP8="  # base64 of 00 ff


@pytest.mark.parametrize(
    ("amount_minor", "currency", "shown"),
    [(5000, "EUR", "50.00"), (5000, "JPY", "5000"), (5000, "BHD", "5.000"), (7, "USD", "0.07")],
)
def test_decision_summary_shows_major_units_of_the_currency(
    amount_minor: int, currency: str, shown: str
) -> None:
    decision = Decision(
        transaction_id="tx-1",
        customer_id="cust-1",
        terminal_id="term-1",
        amount_minor=amount_minor,
        currency=currency,
        action=Action.REVIEW,
        score=0.25,
        rules_fired=["AMOUNT_OVER_THRESHOLD"],
    )
    line = decision_summary(decision)
    assert "\n" not in line
    assert line.split()[0] == "REVIEW"
    assert f"amount={shown} {currency} " in line
    assert "tx=tx-1" in line and "customer=cust-1" in line and "terminal=term-1" in line
    assert "score=0.250" in line
    assert line.endswith("rules=AMOUNT_OVER_THRESHOLD")
    decision.ClearField("rules_fired")
    assert decision_summary(decision).endswith("rules=-")


# --- generated code -----------------------------------------------------------------------------


def test_checked_in_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    written = generate(tmp_path)
    generated_dir = tmp_path / "fraud" / "v1"
    checked_in_dir = ROOT / "fraud" / "v1"
    patterns = ("*_pb2.py", "*_pb2.pyi")
    generated = sorted(p.name for pattern in patterns for p in generated_dir.glob(pattern))
    checked_in = sorted(p.name for pattern in patterns for p in checked_in_dir.glob(pattern))
    protos = sorted(p.stem for p in (ROOT / "proto" / "fraud" / "v1").glob("*.proto"))
    assert protos, "no .proto files found"
    assert generated == sorted(f"{stem}_pb2{ext}" for stem in protos for ext in (".py", ".pyi"))
    assert sorted(p.name for p in written) == generated
    assert checked_in == generated, "fraud/v1 has extra or missing generated files"
    stale = [
        name
        for name in generated
        if (generated_dir / name).read_bytes() != (checked_in_dir / name).read_bytes()
    ]
    assert not stale, f"regenerate with `python -m fraud.protogen`: {stale} differ"
