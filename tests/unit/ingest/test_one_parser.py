"""Replay files, the HTTP gateway and the worker agree on every row: one table, three readers.

Each row of the table is written to a CSV file and to a JSONL file and read back through
``open_source`` (replay's reader), given to the gateway's ``parse_document``, and compared with
what the worker's ``validate_transaction`` says about the Transaction the row stands for. A bad
row must be refused by all of them, naming the same field; a good row must become the same
Transaction everywhere, one the worker accepts.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fraud.contracts.wire import (
    MAX_ID_LENGTH,
    MAX_UTC_OFFSET_MINUTES,
    Rejected,
    parse_transaction,
    validate_transaction,
)
from fraud.ingest.files import SourceError, open_source
from fraud.ingest.gateway import Invalid, parse_document
from fraud.settings import Settings
from fraud.v1.transaction_pb2 import Transaction

NOW_MS = 1_764_000_000_000  # 2025-11-24T16:00:00Z
HOUR_MS = 3_600_000
MAX_FUTURE_MS = Settings().max_future_ms
COLUMNS = (
    "transaction_id",
    "customer_id",
    "terminal_id",
    "amount",
    "currency",
    "event_time",
    "utc_offset_minutes",
    "latitude",
    "longitude",
    "device_id",
)
BASE: dict[str, object] = {
    "transaction_id": "tx-1",
    "customer_id": "cust-42",
    "terminal_id": "term-7",
    "amount": "57.16",
    "currency": "EUR",
    "event_time": "2025-11-24 15:00:00",
    "latitude": "48.85",
    "longitude": "2.35",
    "device_id": "dev-9",
}
BASE_TX = Transaction(
    transaction_id="tx-1",
    customer_id="cust-42",
    terminal_id="term-7",
    amount_minor=5716,
    currency="EUR",
    event_time_ms=NOW_MS - HOUR_MS,
    utc_offset_minutes=0,
    latitude=48.85,
    longitude=2.35,
    device_id="dev-9",
)
ABSENT = object()


def tx_with(**changes: Any) -> Transaction:
    """BASE_TX with fields replaced; ``ABSENT`` clears an optional field."""
    tx = Transaction()
    tx.CopyFrom(BASE_TX)
    for name, value in changes.items():
        if value is ABSENT:
            tx.ClearField(name)
        else:
            setattr(tx, name, value)
    return tx


@dataclass(frozen=True)
class Case:
    """A row: BASE with ``changes`` (``ABSENT`` leaves a field out, an empty CSV cell).

    ``wire`` is the Transaction the row stands for, as a producer could put it on the topic
    without our parsers; None when protobuf cannot carry the row's values (an unparsable
    time, more decimals than the currency has, a missing amount, which protobuf reads as 0).
    ``refused`` is the field to blame, None for a good row (then ``wire`` is the expected
    Transaction).
    """

    name: str
    changes: dict[str, object] = field(default_factory=dict)
    wire: Transaction | None = None
    refused: str | None = None

    def row(self) -> dict[str, object]:
        merged = {**BASE, **self.changes}
        return {k: v for k, v in merged.items() if v is not ABSENT}


LONG_ID = "t" * (MAX_ID_LENGTH + 1)
FUTURE_MS = NOW_MS + MAX_FUTURE_MS + 1

GOOD = [
    Case("the base row", wire=BASE_TX),
    Case("zero amount: the worker takes it", {"amount": "0.00"}, tx_with(amount_minor=0)),
    Case("JPY has no decimals", {"amount": "5000", "currency": "JPY"}, tx_with(
        amount_minor=5000, currency="JPY")),
    Case("BHD has three", {"amount": "1.234", "currency": "bhd"}, tx_with(
        amount_minor=1234, currency="BHD")),
    Case("amount as a JSON number", {"amount": 57.16}, BASE_TX),
    Case("integer ids", {"customer_id": 42}, tx_with(customer_id="42")),
    Case("id of the longest length", {"terminal_id": "t" * MAX_ID_LENGTH}, tx_with(
        terminal_id="t" * MAX_ID_LENGTH)),
    Case("ISO 8601 with an offset", {"event_time": "2025-11-24T17:00:00.250+02:00"}, tx_with(
        event_time_ms=NOW_MS - HOUR_MS + 250, utc_offset_minutes=120)),
    Case("the offset column beats the ISO offset", {
        "event_time": "2025-11-24T17:00:00+02:00", "utc_offset_minutes": "-300"}, tx_with(
        utc_offset_minutes=-300)),
    Case("epoch seconds", {"event_time": str(NOW_MS // 1000)}, tx_with(event_time_ms=NOW_MS)),
    Case("epoch ms as a JSON number", {"event_time": NOW_MS}, tx_with(event_time_ms=NOW_MS)),
    Case("the latest time the worker takes", {"event_time": NOW_MS + MAX_FUTURE_MS}, tx_with(
        event_time_ms=NOW_MS + MAX_FUTURE_MS)),
    Case("the widest offset", {"utc_offset_minutes": -MAX_UTC_OFFSET_MINUTES}, tx_with(
        utc_offset_minutes=-MAX_UTC_OFFSET_MINUTES)),
    Case("coordinates on the bounds", {"latitude": "-90", "longitude": 180}, tx_with(
        latitude=-90.0, longitude=180.0)),
    Case("no location", {"latitude": ABSENT, "longitude": ABSENT}, tx_with(
        latitude=ABSENT, longitude=ABSENT)),
    Case("no currency: the default", {"currency": ABSENT}, BASE_TX),
    Case("no device", {"device_id": ABSENT}, tx_with(device_id="")),
]  # fmt: skip

BAD = [
    # the worker dead-letters these: each is a Transaction protobuf can carry
    Case("negative amount", {"amount": "-2.50"}, tx_with(amount_minor=-250), "amount"),
    Case("offset of 900 minutes", {"utc_offset_minutes": 900}, tx_with(
        utc_offset_minutes=900), "utc_offset_minutes"),
    Case("unknown currency", {"currency": "XYZ"}, tx_with(currency="XYZ"), "currency"),
    Case("id over the limit", {"transaction_id": LONG_ID}, tx_with(
        transaction_id=LONG_ID), "transaction_id"),
    Case("empty id", {"customer_id": ""}, tx_with(customer_id=""), "customer_id"),
    Case("missing id", {"terminal_id": ABSENT}, tx_with(terminal_id=""), "terminal_id"),
    Case("latitude not finite", {"latitude": "nan"}, tx_with(latitude=math.nan), "latitude"),
    Case("longitude not finite", {"longitude": math.inf}, tx_with(
        longitude=math.inf), "longitude"),
    Case("latitude out of range", {"latitude": "91"}, tx_with(latitude=91.0), "latitude"),
    Case("longitude out of range", {"longitude": "-180.5"}, tx_with(
        longitude=-180.5), "longitude"),
    Case("latitude without longitude", {"longitude": ABSENT}, tx_with(
        longitude=ABSENT), "longitude"),
    Case("event time far in the future", {"event_time": FUTURE_MS}, tx_with(
        event_time_ms=FUTURE_MS), "event_time"),
    Case("event time before 1970", {"event_time": "1969-12-31 23:59:59"}, tx_with(
        event_time_ms=-1000), "event_time"),
    Case("event time at the epoch", {"event_time": "0"}, tx_with(event_time_ms=0), "event_time"),
    # protobuf cannot carry these values: refused before anything reaches the topic
    Case("too many decimals for EUR", {"amount": "57.161"}, refused="amount"),
    Case("decimals for JPY", {"amount": "1.5", "currency": "JPY"}, refused="amount"),
    Case("amount not a number", {"amount": "abc"}, refused="amount"),
    Case("missing amount", {"amount": ABSENT}, refused="amount"),
    Case("unparsable time", {"event_time": "yesterday"}, refused="event_time"),
    Case("impossible date", {"event_time": "2025-02-30 00:00:00"}, refused="event_time"),
    Case("missing time", {"event_time": ABSENT}, refused="event_time"),
    Case("offset not an integer", {"utc_offset_minutes": "1.5"}, refused="utc_offset_minutes"),
    Case("latitude not a number", {"latitude": "north"}, refused="latitude"),
    # past Python's int() digit limit (4,300): a refusal like any out-of-range value
    Case("a 5,000-digit offset", {"utc_offset_minutes": "9" * 5000}, refused="utc_offset_minutes"),
    Case("a 5,000-digit epoch time", {"event_time": "9" * 5000}, refused="event_time"),
]  # fmt: skip


# ---------------------------------------------------------------- the three readers


def write_csv(path: Path, row: dict[str, object]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerow(["" if (value := row.get(c)) is None else str(value) for c in COLUMNS])
    return path


def write_jsonl(path: Path, row: dict[str, object]) -> Path:
    """Every column as a key (an absent field is null, the empty cell of JSON), as a header."""
    path.write_text(json.dumps({c: row.get(c) for c in COLUMNS}) + "\n", encoding="utf-8")
    return path


def read_file(path: Path, line: int) -> Transaction | str | None:
    """The row's Transaction, or the field the SourceError blames (checked against its text)."""
    source = open_source(path, clock=lambda: NOW_MS, max_future_ms=MAX_FUTURE_MS)
    try:
        rows = list(source)
    except SourceError as exc:
        assert str(exc).startswith(f"{path}:{line}: field {exc.field!r}: "), exc
        return exc.field
    (only,) = rows
    return only.transaction


def read_document(row: dict[str, object]) -> Transaction | Invalid:
    return parse_document(row, now_ms=NOW_MS, max_future_ms=MAX_FUTURE_MS)


def worker_field(rejected: Rejected, tx: Transaction) -> str:
    """The field the worker's reason names; for a location, the coordinate at fault."""
    if rejected.reason == "invalid_location":
        if not tx.HasField("latitude"):
            return "latitude"
        if not tx.HasField("longitude"):
            return "longitude"
        return "latitude" if not abs(tx.latitude) <= 90 else "longitude"
    for prefix in ("missing_", "invalid_"):
        name = rejected.reason.removeprefix(prefix)
        if name in ("transaction_id", "customer_id", "terminal_id"):
            return name
    return {
        "invalid_amount": "amount",
        "unknown_currency": "currency",
        "invalid_event_time": "event_time",
        "invalid_utc_offset": "utc_offset_minutes",
    }[rejected.reason]


# ---------------------------------------------------------------- the tests


@pytest.mark.parametrize("case", GOOD, ids=[c.name for c in GOOD])
def test_good_rows_become_one_transaction_the_worker_takes(case: Case, tmp_path: Path) -> None:
    row = case.row()
    from_csv = read_file(write_csv(tmp_path / "t.csv", row), 2)
    from_jsonl = read_file(write_jsonl(tmp_path / "t.jsonl", row), 1)
    from_http = read_document(row)
    assert from_csv == case.wire, from_csv
    assert from_jsonl == case.wire, from_jsonl
    assert from_http == case.wire, from_http
    assert isinstance(from_http, Transaction)
    assert validate_transaction(from_http, NOW_MS, MAX_FUTURE_MS) is None
    # and through the worker's own decode path
    assert parse_transaction(from_http.SerializeToString(), NOW_MS, MAX_FUTURE_MS) == from_http


@pytest.mark.parametrize("case", BAD, ids=[c.name for c in BAD])
def test_bad_rows_are_refused_by_all_naming_one_field(case: Case, tmp_path: Path) -> None:
    row = case.row()
    from_csv = read_file(write_csv(tmp_path / "t.csv", row), 2)
    from_jsonl = read_file(write_jsonl(tmp_path / "t.jsonl", row), 1)
    from_http = read_document(row)
    assert isinstance(from_http, Invalid), from_http
    assert (from_csv, from_jsonl, from_http.field) == (case.refused,) * 3
    if case.wire is not None:
        rejected = validate_transaction(case.wire, NOW_MS, MAX_FUTURE_MS)
        assert rejected is not None, "the worker takes what the edges refuse"
        assert worker_field(rejected, case.wire) == case.refused, rejected
        assert rejected.reason == from_http.reason, (rejected, from_http)


def test_the_table_covers_every_field_a_row_can_be_refused_for() -> None:
    assert {c.refused for c in BAD} == set(COLUMNS) - {"device_id"}
    assert all(c.wire is not None for c in GOOD)


def test_blank_text_is_a_missing_value_at_the_edges(tmp_path: Path) -> None:
    """Stricter than the worker, which takes any non-empty id: a blank cell is no id."""
    row = Case("blank id", {"terminal_id": "  "}).row()
    assert read_file(write_csv(tmp_path / "t.csv", row), 2) == "terminal_id"
    assert read_file(write_jsonl(tmp_path / "t.jsonl", row), 1) == "terminal_id"
    got = read_document(row)
    assert isinstance(got, Invalid) and got.reason == "missing_terminal_id"
