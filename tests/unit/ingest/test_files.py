"""Tests for fraud.ingest.files: reading transaction files into Transactions and labels."""

from __future__ import annotations

import gzip
import json
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from fraud.ingest.files import (
    HANDBOOK,
    ColumnMapping,
    Row,
    SourceError,
    detect_mapping,
    label_for,
    open_source,
    parse_event_time,
    parse_mapping,
)

HANDBOOK_HEADER = (
    ",TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_TIME_SECONDS,"
    "TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO"
)
HANDBOOK_ROWS = [
    "0,0,2018-04-01 00:00:31,596,3156,57.16,31,0,0,0",
    "1,1,2018-04-01 00:02:10,4961,3412,81.51,130,0,1,1",
    "2,2,2018-04-01 00:07:56,2,1365,146.00,476,0,0,0",
    "3,3,2018-04-02 23:59:59,4128,8737,64.4,172799,1,0,0",
]
# 2018-04-01T00:00:00Z
APRIL_1 = 1_522_540_800_000


def write(path: Path, lines: Iterable[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def handbook_csv(tmp_path: Path, rows: list[str] | None = None, name: str = "hb.csv") -> Path:
    return write(tmp_path / name, [HANDBOOK_HEADER, *(HANDBOOK_ROWS if rows is None else rows)])


def read_all(path: Path, mapping: ColumnMapping | None = None, **kwargs: str) -> list[Row]:
    return list(open_source(path, mapping, **kwargs))


def error_of(path: Path, mapping: ColumnMapping | None = None) -> str:
    with pytest.raises(SourceError) as info:
        read_all(path, mapping)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- mapping ------------------------------------------------------------------------------------


def test_parse_mapping_overrides_base() -> None:
    mapping = parse_mapping("event_time=TX_DATETIME, amount = TX_AMOUNT,fraud=", ColumnMapping())
    assert mapping.event_time == "TX_DATETIME"
    assert mapping.amount == "TX_AMOUNT"
    assert mapping.fraud is None
    assert mapping.transaction_id == "transaction_id"
    assert parse_mapping("", HANDBOOK) == HANDBOOK


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("when=TX_DATETIME", "unknown field 'when'; valid fields: transaction_id, customer_id"),
        ("amount", "expected field=COLUMN"),
        ("amount=A,amount=B", "given twice"),
        ("amount=", "required field 'amount'"),
    ],
)
def test_parse_mapping_errors(spec: str, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        parse_mapping(spec, ColumnMapping())


def test_detect_mapping() -> None:
    assert detect_mapping(HANDBOOK_HEADER.split(",")) is HANDBOOK
    assert detect_mapping(["TRANSACTION_ID", "TX_DATETIME"]) == ColumnMapping()
    assert detect_mapping(["transaction_id", "amount"]) == ColumnMapping()


# -- CSV ----------------------------------------------------------------------------------------


def test_handbook_csv_auto_detected(tmp_path: Path) -> None:
    source = open_source(handbook_csv(tmp_path))
    assert source.mapping is HANDBOOK
    assert source.columns[1:3] == ("TRANSACTION_ID", "TX_DATETIME")
    assert set(source.absent) == {
        "currency",
        "utc_offset_minutes",
        "latitude",
        "longitude",
        "device_id",
    }
    rows = list(source)
    assert [r.line for r in rows] == [2, 3, 4, 5]
    tx = rows[0].transaction
    assert (tx.transaction_id, tx.customer_id, tx.terminal_id) == ("0", "596", "3156")
    assert tx.amount_minor == 5716
    assert tx.currency == "EUR"
    assert tx.event_time_ms == APRIL_1 + 31_000
    assert tx.utc_offset_minutes == 0
    assert not tx.HasField("latitude")
    assert not tx.HasField("longitude")
    assert tx.device_id == ""
    assert [r.fraud for r in rows] == [False, True, False, False]
    assert [r.transaction.amount_minor for r in rows] == [5716, 8151, 14600, 6440]
    assert rows[3].transaction.event_time_ms == APRIL_1 + 2 * 86_400_000 - 1000
    # a Source can be iterated again
    assert [r.transaction.transaction_id for r in source] == ["0", "1", "2", "3"]


@pytest.mark.parametrize(
    ("amount", "currency", "minor"),
    [
        ("57.16", "EUR", 5716),
        ("1.15", "EUR", 115),  # float("1.15") * 100 == 114.99999999999999
        ("4.35", "EUR", 435),  # float("4.35") * 100 == 434.99999999999994
        ("0.1", "EUR", 10),
        ("1.10", "EUR", 110),
        ("7", "EUR", 700),
        ("5.", "EUR", 500),
        ("57.160", "EUR", 5716),  # extra zero decimals are fine (through to_minor)
        ("1e2", "EUR", 10000),
        ("1234", "JPY", 1234),
        ("1.234", "KWD", 1234),
        ("99999999999999.99", "EUR", 9999999999999999),
    ],
)
def test_amounts_exact(tmp_path: Path, amount: str, currency: str, minor: int) -> None:
    path = write(
        tmp_path / "t.csv",
        [
            "transaction_id,customer_id,terminal_id,amount,currency,event_time",
            f't1,c1,p1,"{amount}",{currency},2018-04-01 00:00:00',
        ],
    )
    (row,) = read_all(path)
    assert row.transaction.amount_minor == minor
    assert row.transaction.currency == currency


def test_custom_mapping_with_all_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path / "custom.csv",
        [
            "id,card,pos,value,ccy,ts,tz,lat,lon,dev,is_fraud",
            "a1,c1,p1,12.34,usd,2018-04-01T02:00:31+02:00,,48.85,2.35,dev-9,TRUE",
            "a2,c1,p1,1000,JPY,2018-04-01T00:00:00Z,-300,,,,",
            "a3,c2,p2,5,,1522540831,60,-33.9,151.2,d,False",
        ],
    )
    mapping = parse_mapping(
        "transaction_id=id,customer_id=card,terminal_id=pos,amount=value,currency=ccy,"
        "event_time=ts,utc_offset_minutes=tz,latitude=lat,longitude=lon,device_id=dev,"
        "fraud=is_fraud",
        ColumnMapping(),
    )
    source = open_source(path, mapping, default_currency="GBP")
    assert source.absent == ()
    first, second, third = list(source)

    tx = first.transaction
    assert tx.currency == "USD"
    assert tx.amount_minor == 1234
    assert tx.event_time_ms == APRIL_1 + 31_000
    assert tx.utc_offset_minutes == 120  # from the time: the offset cell is empty
    assert tx.latitude == 48.85
    assert tx.longitude == 2.35
    assert tx.device_id == "dev-9"
    assert first.fraud is True

    tx = second.transaction
    assert (tx.currency, tx.amount_minor) == ("JPY", 1000)
    assert tx.event_time_ms == APRIL_1
    assert tx.utc_offset_minutes == -300  # the offset column wins
    assert not tx.HasField("latitude")
    assert tx.device_id == ""
    assert second.fraud is None  # empty label cell: unlabelled

    tx = third.transaction
    assert (tx.currency, tx.amount_minor) == ("GBP", 500)  # empty currency -> default
    assert tx.event_time_ms == APRIL_1 + 31_000
    assert tx.utc_offset_minutes == 60
    assert tx.latitude == -33.9
    assert third.fraud is False


def test_quoted_multiline_field_keeps_physical_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path / "q.csv",
        [
            "transaction_id,customer_id,terminal_id,amount,event_time,device_id",
            't1,c1,p1,1.00,2018-04-01 00:00:00,"two',
            'lines"',
            "",
            "t2,c1,p1,oops,2018-04-01 00:00:00,d",
        ],
    )
    source = open_source(path)
    rows = iter(source)
    first = next(rows)
    assert first.line == 2
    assert first.transaction.device_id == "two\nlines"
    with pytest.raises(SourceError, match=r"q\.csv:5: field 'amount': bad value 'oops'"):
        next(rows)


def test_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(
        b"\xef\xbb\xbftransaction_id,customer_id,terminal_id,amount,event_time\r\n"
        b"t1,c1,p1,3.5,2018-04-01 00:00:00\r\n"
    )
    (row,) = read_all(path)
    assert row.transaction.amount_minor == 350
    assert row.line == 2


# -- event time -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ms", "offset"),
    [
        ("2018-04-01 00:00:31", APRIL_1 + 31_000, None),
        ("2018-04-01T00:00:31", APRIL_1 + 31_000, None),
        (" 2018-04-01 00:00:31 ", APRIL_1 + 31_000, None),
        ("2018-04-01T00:00:31.5+02:00", APRIL_1 + 31_500 - 7_200_000, 120),
        ("2018-04-01T00:00:31.123456789Z", APRIL_1 + 31_123, 0),
        ("2018-04-01T00:00:31.9999-05:30", APRIL_1 + 31_999 + 19_800_000, -330),
        ("2018-04-01 00:00:31.250", APRIL_1 + 31_250, None),
        ("2018-04-01", APRIL_1, None),
        ("1522540831", APRIL_1 + 31_000, None),  # seconds
        ("1522540831123", APRIL_1 + 31_123, None),  # milliseconds
        ("1522540831.5", APRIL_1 + 31_500, None),  # decimal seconds
        (1522540831, APRIL_1 + 31_000, None),
        (1522540831123, APRIL_1 + 31_123, None),
        (1522540831.25, APRIL_1 + 31_250, None),
        ("0", 0, None),
        ("99999999999", 99_999_999_999_000, None),  # just below the threshold: seconds
        ("100000000000", 100_000_000_000, None),  # the threshold: milliseconds
        ("-86400", -86_400_000, None),
        ("1969-12-31 23:59:59", -1000, None),
        ("2000-02-29 12:00:00", 951_825_600_000, None),
    ],
)
def test_parse_event_time(value: object, ms: int, offset: int | None) -> None:
    assert parse_event_time(value) == (ms, offset)


@pytest.mark.parametrize(
    "value",
    ["2018-02-30 00:00:00", "2018-04-01 24:00:00", "2018-04-01 00:60:00", "yesterday", "", True],
)
def test_parse_event_time_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_event_time(value)


def test_fixed_layout_cache_is_strict(tmp_path: Path) -> None:
    # the same date and time strings first valid (cached) and then in bad combinations
    path = write(
        tmp_path / "t.csv",
        [
            "transaction_id,customer_id,terminal_id,amount,event_time",
            "t1,c,p,1,2018-04-01 00:00:31",
            "t2,c,p,1,2018-04-01T00:00:31",
            "t3,c,p,1,2018-04-01x00:00:31",
        ],
    )
    rows = iter(open_source(path))
    assert next(rows).transaction.event_time_ms == APRIL_1 + 31_000
    assert next(rows).transaction.event_time_ms == APRIL_1 + 31_000
    with pytest.raises(SourceError, match=r"t\.csv:4: field 'event_time': bad value"):
        next(rows)


# -- JSONL and gzip -------------------------------------------------------------------------------


def test_jsonl(tmp_path: Path) -> None:
    records = [
        {
            "transaction_id": "t1",
            "customer_id": 7,
            "terminal_id": "p1",
            "amount": 57.16,
            "currency": "EUR",
            "event_time": "2018-04-01T00:00:31+01:00",
            "latitude": 48.1,
            "longitude": 11.5,
            "fraud": True,
        },
        {
            "transaction_id": "t2",
            "customer_id": "c2",
            "terminal_id": "p2",
            "amount": "0.05",
            "event_time": 1522540831123,
            "fraud": 0,
            "device_id": None,
            "extra": [1, 2],
        },
    ]
    path = tmp_path / "tx.jsonl"
    path.write_text(
        json.dumps(records[0]) + "\n\n" + json.dumps(records[1]) + "\n", encoding="utf-8"
    )
    source = open_source(path)
    assert source.format == "jsonl"
    assert source.columns[0] == "transaction_id"
    first, second = list(source)
    assert first.line == 1
    assert first.transaction.customer_id == "7"
    assert first.transaction.amount_minor == 5716
    assert first.transaction.event_time_ms == APRIL_1 + 31_000 - 3_600_000
    assert first.transaction.utc_offset_minutes == 60
    assert first.transaction.latitude == 48.1
    assert first.fraud is True
    assert second.line == 3
    assert second.transaction.amount_minor == 5
    assert second.transaction.currency == "EUR"
    assert second.transaction.event_time_ms == APRIL_1 + 31_123
    assert second.fraud is False


def test_jsonl_errors(tmp_path: Path) -> None:
    header = '{"transaction_id":"t1","customer_id":"c","terminal_id":"p","amount":1,'
    good = header + '"event_time":"2018-04-01 00:00:00"}'
    path = write(tmp_path / "bad.ndjson", [good, header + '"event_time":"2018-04-01 00:00:00"'])
    assert error_of(path) == f"{path}:2: invalid JSON (Expecting ',' delimiter)"
    path = write(tmp_path / "list.jsonl", [good, "[1, 2]"])
    assert error_of(path) == f"{path}:2: expected a JSON object, got list"
    path = write(tmp_path / "nokey.jsonl", [good, '{"transaction_id":"t2"}'])
    assert error_of(path) == f"{path}:2: field 'customer_id': missing value"
    path = write(tmp_path / "type.jsonl", [header + '"event_time":{"a":1}}'])
    assert error_of(path) == f"{path}:1: field 'event_time': bad value {{'a': 1}} (not a date-time)"


@pytest.mark.parametrize("name", ["hb.csv.gz", "hb.jsonl.gz"])
def test_gzip(tmp_path: Path, name: str) -> None:
    if name.endswith(".csv.gz"):
        text = "".join(line + "\n" for line in [HANDBOOK_HEADER, *HANDBOOK_ROWS])
    else:
        text = "".join(
            json.dumps(
                {
                    "TRANSACTION_ID": i,
                    "TX_DATETIME": "2018-04-01 00:00:31",
                    "CUSTOMER_ID": 1,
                    "TERMINAL_ID": 2,
                    "TX_AMOUNT": "57.16",
                    "TX_FRAUD": i % 2,
                }
            )
            + "\n"
            for i in range(4)
        )
    path = tmp_path / name
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write(text)
    source = open_source(path)
    assert source.mapping is HANDBOOK
    assert source.compressed
    rows = list(source)
    assert len(rows) == 4
    assert rows[0].transaction.amount_minor == 5716
    assert rows[1].fraud is True


def test_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv.gz"
    path.write_text("transaction_id\n", encoding="utf-8")
    with pytest.raises(SourceError, match=r"plain\.csv\.gz: corrupt or truncated gzip data"):
        open_source(path)


# -- labels ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "expected"),
    [("0", False), ("1", True), ("true", True), ("FALSE", False), (" True ", True), ("", None)],
)
def test_label_values(tmp_path: Path, cell: str, expected: bool | None) -> None:
    path = write(
        tmp_path / "l.csv",
        [
            "transaction_id,customer_id,terminal_id,amount,event_time,fraud",
            f"t,c,p,1,1522540800,{cell}",
        ],
    )
    (row,) = read_all(path)
    assert row.fraud is expected


def test_label_for(tmp_path: Path) -> None:
    rows = read_all(handbook_csv(tmp_path))
    label = label_for(rows[1], delay_ms=7 * 86_400_000)
    assert label is not None
    assert label.transaction_id == "1"
    assert label.customer_id == "4961"
    assert label.terminal_id == "3412"
    assert label.fraud is True
    assert label.transaction_time_ms == APRIL_1 + 130_000
    assert label.event_time_ms == APRIL_1 + 130_000 + 7 * 86_400_000
    genuine = label_for(rows[0], 0)
    assert genuine is not None
    assert genuine.fraud is False
    assert genuine.event_time_ms == genuine.transaction_time_ms
    with pytest.raises(ValueError, match="delay"):
        label_for(rows[0], -1)


def test_label_for_unlabelled(tmp_path: Path) -> None:
    path = write(
        tmp_path / "n.csv",
        ["transaction_id,customer_id,terminal_id,amount,event_time", "t,c,p,1,1522540800"],
    )
    (row,) = read_all(path)
    assert row.fraud is None
    assert label_for(row, 1000) is None


# -- errors ---------------------------------------------------------------------------------------


def test_missing_required_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "m.csv", ["transaction_id,customer_id,amount,when", "t,c,1,0"])
    with pytest.raises(SourceError) as info:
        open_source(path)
    assert str(info.value) == (
        f"{path}: missing required column(s) 'terminal_id' (terminal_id), "
        "'event_time' (event_time); the file has 'transaction_id', 'customer_id', 'amount', 'when'"
    )


def test_missing_mapped_column(tmp_path: Path) -> None:
    path = handbook_csv(tmp_path)
    with pytest.raises(SourceError, match=r"missing required column\(s\) 'AMOUNT' \(amount\)"):
        open_source(path, parse_mapping("amount=AMOUNT", HANDBOOK))


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "9,9,2018-04-01 00:00:31,596,3156,abc,31,0,0,0",
            "field 'TX_AMOUNT': bad value 'abc' (amount 'abc' is not a number)",
        ),
        (
            "9,9,2018-04-01 00:00:31,596,3156,57.161,31,0,0,0",
            "field 'TX_AMOUNT': bad value '57.161' (amount '57.161' has more than 2 decimals",
        ),
        ("9,9,2018-04-01 00:00:31,596,3156,,31,0,0,0", "field 'TX_AMOUNT': missing value"),
        (
            "9,9,2018-04-01 00:00:31,596,3156,-2.50,31,0,0,0",
            "field 'TX_AMOUNT': bad value '-2.50' (amount '-2.50' is negative)",
        ),
        (
            "9,9,2018-13-01 00:00:31,596,3156,1.00,31,0,0,0",
            "field 'TX_DATETIME': bad value '2018-13-01 00:00:31' (not a date-time)",
        ),
        ("9,9,,596,3156,1.00,31,0,0,0", "field 'TX_DATETIME': missing value"),
        ("9,,2018-04-01 00:00:31,596,3156,1.00,31,0,0,0", "field 'TRANSACTION_ID': missing value"),
        (
            "9,9,2018-04-01 00:00:31,596,3156,1.00,31,0,2,0",
            "field 'TX_FRAUD': bad value '2' (expected 0/1 or true/false)",
        ),
        ("9,9,2018-04-01 00:00:31,596,3156,1.00,31,0,0", "expected 10 fields, got 9"),
    ],
)
def test_bad_row_reports_path_and_line(tmp_path: Path, row: str, message: str) -> None:
    path = handbook_csv(tmp_path, [*HANDBOOK_ROWS[:2], row, HANDBOOK_ROWS[2]])
    source = open_source(path)
    seen: list[Row] = []
    with pytest.raises(SourceError) as info:
        seen.extend(source)
    assert str(info.value).startswith(f"{path}:4: {message}")
    assert "\n" not in str(info.value)
    assert [r.line for r in seen] == [2, 3]  # the good rows before it, nothing after


def test_unknown_currency(tmp_path: Path) -> None:
    path = write(
        tmp_path / "c.csv",
        [
            "transaction_id,customer_id,terminal_id,amount,currency,event_time",
            "t1,c,p,1.00,EUR,1522540800",
            "t2,c,p,1.00,XYZ,1522540800",
        ],
    )
    assert error_of(path) == f"{path}:3: field 'currency': bad value 'XYZ' (unknown currency 'XYZ')"
    with pytest.raises(SourceError, match="unknown default currency 'ABC'"):
        open_source(path, default_currency="ABC")


@pytest.mark.parametrize(
    ("column", "cell", "reason"),
    [
        ("latitude", "91", "must be within +-90 degrees"),
        ("longitude", "east", "not a number"),
        ("utc_offset_minutes", "1.5", "not an integer number of minutes"),
        ("utc_offset_minutes", "900", "offset must be within +-840 minutes"),
    ],
)
def test_bad_optional_values(tmp_path: Path, column: str, cell: str, reason: str) -> None:
    path = write(
        tmp_path / "o.csv",
        [f"transaction_id,customer_id,terminal_id,amount,event_time,{column}", f"t,c,p,1,0,{cell}"],
    )
    assert error_of(path) == f"{path}:2: field '{column}': bad value '{cell}' ({reason})"


def test_unknown_suffix(tmp_path: Path) -> None:
    path = write(tmp_path / "data.txt", [HANDBOOK_HEADER])
    with pytest.raises(SourceError, match=r"data\.txt: unknown file type; expected one of \.csv"):
        open_source(path)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("e.csv", "", "empty file"),
        ("e.csv", "\n\n", "empty file"),
        ("e.csv", HANDBOOK_HEADER + "\n", "empty file (a header but no rows)"),
        ("e.jsonl", "", "empty file"),
        ("e.jsonl", "\n  \n", "empty file"),
    ],
)
def test_empty_file(tmp_path: Path, name: str, content: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(SourceError) as info:
        open_source(path)
    assert str(info.value) == f"{path}: {message}"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.csv: No such file or directory"):
        open_source(tmp_path / "nope.csv")


def test_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "u.csv"
    path.write_bytes(b"transaction_id,customer_id,terminal_id,amount,event_time\nt,c,p,1,\xff\n")
    with pytest.raises(SourceError, match=r"u\.csv(:\d+)?: not valid UTF-8 text"):
        read_all(path)


def test_duplicate_mapped_column(tmp_path: Path) -> None:
    path = write(
        tmp_path / "d.csv", ["transaction_id,customer_id,terminal_id,amount,event_time,amount"]
    )
    path.write_text(path.read_text() + "t,c,p,1,0,2\n")
    with pytest.raises(SourceError, match="'amount' appear more than once"):
        open_source(path)


# -- Parquet --------------------------------------------------------------------------------------


def test_parquet_without_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    path = tmp_path / "tx.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(
        SourceError, match=r"tx\.parquet: reading Parquet needs pyarrow.*pip install"
    ):
        open_source(path)


def test_parquet(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(
        {
            "TRANSACTION_ID": pa.array([1, 2], pa.int64()),
            "TX_DATETIME": pa.array(
                [APRIL_1 * 1_000_000 + 31_000_123_456, APRIL_1 * 1_000_000], pa.timestamp("ns")
            ),
            "CUSTOMER_ID": ["c1", "c2"],
            "TERMINAL_ID": [10, 20],
            "TX_AMOUNT": [57.16, 0.1],
            "TX_FRAUD": [1, None],
        }
    )
    path = tmp_path / "tx.parquet"
    pq.write_table(table, path)
    source = open_source(path)
    assert source.mapping is HANDBOOK
    first, second = list(source)
    assert first.line == 1
    assert first.transaction.transaction_id == "1"
    assert first.transaction.terminal_id == "10"
    assert first.transaction.event_time_ms == APRIL_1 + 31_000
    assert first.transaction.amount_minor == 5716
    assert first.fraud is True
    assert second.transaction.amount_minor == 10
    assert second.fraud is None
