"""Read a transaction file (CSV, JSONL, Parquet) into ``Transaction`` messages and fraud labels.

A :class:`ColumnMapping` names the file's column for every ``Transaction`` field.
:func:`open_source` reads the header, checks that the required columns are there and returns a
:class:`Source`; iterating it streams the file (constant memory) and yields one :class:`Row` per
record. A bad value stops the iteration with a one-line :class:`SourceError`::

    data.csv:1234: field 'TX_AMOUNT': bad value 'abc' (amount 'abc' is not a number)

Formats, chosen by suffix: ``.csv``, ``.jsonl``/``.ndjson`` (also ``.gz``-compressed) and
``.parquet`` (only when ``pyarrow`` is importable).

Values:

* **ids** (transaction, customer, terminal): text, kept as is; must not be empty. Integer JSON or
  Parquet values are written in decimal.
* **amount**: a decimal number in major units (``"57.16"``), converted exactly to minor units of
  the row's currency (5716 for EUR) by :func:`fraud.contracts.currency.to_minor`. More decimals
  than the
  currency has is an error, never a rounding.
* **currency**: ISO 4217 code (upper-cased); when the column is absent or the cell empty,
  ``default_currency``.
* **event time**, one of

  - ``"YYYY-MM-DD HH:MM:SS"`` (or with ``T``): naive, taken as UTC (the handbook's format; this
    layout has a cached fast path);
  - ISO 8601 with fractional seconds and an offset, ``"2018-04-01T00:00:31.5+02:00"``: converted
    to UTC, and the offset (120) becomes ``utc_offset_minutes`` unless the file has an offset
    column with a value for that row. Without an offset the time is UTC. Fractions below a
    millisecond are dropped (truncated towards the past);
  - an integer epoch (a string of digits, or a JSON/Parquet integer), decided by magnitude:
    ``|value| < 10**11`` is **seconds** (which covers every date up to the year 5138), anything
    larger is **milliseconds** (which covers every date from 1973-03-03 on). Decimal epoch
    seconds (``"1522540831.5"``) are also accepted;
  - a ``datetime`` / ``date`` (from Parquet): naive means UTC.

* **utc_offset_minutes**: integer minutes, ``|offset| < 1440``; empty means "not given".
* **latitude / longitude**: decimal degrees within range; empty means unset.
* **fraud**: ``0``/``1``/``true``/``false`` (case-insensitive) or a JSON boolean; an empty cell
  or ``null`` means "no label" (``Row.fraud is None``).

Line numbers are physical lines: the CSV header is line 1 (a quoted field spanning several lines
is reported at its first line); JSONL lines count from 1; for Parquet the "line" is the 1-based
row number.
"""

from __future__ import annotations

import csv
import gzip
import importlib
import json
import math
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from typing import IO, Any, NamedTuple

from fraud.contracts.currency import EXPONENTS, CurrencyError, to_minor
from fraud.contracts.units import DAY_MS as _DAY_MS
from fraud.contracts.units import INT64_MAX as _INT64_MAX
from fraud.contracts.units import INT64_MIN as _INT64_MIN
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction

__all__ = [
    "HANDBOOK",
    "OPTIONAL_FIELDS",
    "REQUIRED_FIELDS",
    "ColumnMapping",
    "Row",
    "Source",
    "SourceError",
    "detect_mapping",
    "label_for",
    "open_source",
    "parse_event_time",
    "parse_mapping",
]


class SourceError(Exception):
    """An unreadable transaction file or bad value; one-line message, ``path[:line]: ...``."""


REQUIRED_FIELDS: tuple[str, ...] = (
    "transaction_id",
    "customer_id",
    "terminal_id",
    "amount",
    "event_time",
)
OPTIONAL_FIELDS: tuple[str, ...] = (
    "currency",
    "utc_offset_minutes",
    "latitude",
    "longitude",
    "device_id",
    "fraud",
)


@dataclass(frozen=True)
class ColumnMapping:
    """The source column of every field. ``None`` for an optional field means "not in the file".

    An optional field whose column is not in the file is simply absent (see ``Source.absent``).
    """

    transaction_id: str = "transaction_id"
    customer_id: str = "customer_id"
    terminal_id: str = "terminal_id"
    amount: str = "amount"
    event_time: str = "event_time"
    currency: str | None = "currency"
    utc_offset_minutes: str | None = "utc_offset_minutes"
    latitude: str | None = "latitude"
    longitude: str | None = "longitude"
    device_id: str | None = "device_id"
    fraud: str | None = "fraud"

    def __post_init__(self) -> None:
        for name in REQUIRED_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"column mapping: required field {name!r} needs a column name")
        for name in OPTIONAL_FIELDS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"column mapping: field {name!r} must be a column name or None")

    def required(self) -> dict[str, str]:
        """Field name -> column for the required fields."""
        return {name: getattr(self, name) for name in REQUIRED_FIELDS}

    def optional(self) -> dict[str, str]:
        """Field name -> column for the optional fields that are mapped."""
        return {
            name: getattr(self, name) for name in OPTIONAL_FIELDS if getattr(self, name) is not None
        }


#: The Fraud Detection Handbook's simulated data set (``TX_DATETIME`` is naive UTC, amounts EUR).
#: The handbook has no currency or offset column; the names below are used if a file adds them.
HANDBOOK = ColumnMapping(
    transaction_id="TRANSACTION_ID",
    customer_id="CUSTOMER_ID",
    terminal_id="TERMINAL_ID",
    amount="TX_AMOUNT",
    event_time="TX_DATETIME",
    currency="TX_CURRENCY",
    utc_offset_minutes="TX_UTC_OFFSET_MINUTES",
    latitude="TX_LAT",
    longitude="TX_LON",
    device_id="DEVICE_ID",
    fraud="TX_FRAUD",
)

_FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ColumnMapping))


def parse_mapping(spec: str, base: ColumnMapping) -> ColumnMapping:
    """Apply a CLI mapping like ``"event_time=TX_DATETIME,amount=TX_AMOUNT"`` on top of ``base``.

    ``field=`` (empty column) unmaps an optional field. Raises ValueError on a malformed spec or
    an unknown field name (the message lists the valid ones).
    """
    changes: dict[str, str | None] = {}
    for raw in spec.split(","):
        item = raw.strip()
        if not item:
            continue
        name, eq, column = item.partition("=")
        name, column = name.strip(), column.strip()
        if not eq:
            raise ValueError(f"column mapping: expected field=COLUMN, got {item!r}")
        if name not in _FIELD_NAMES:
            raise ValueError(
                f"column mapping: unknown field {name!r}; valid fields: {', '.join(_FIELD_NAMES)}"
            )
        if name in changes:
            raise ValueError(f"column mapping: field {name!r} given twice")
        if not column and name in REQUIRED_FIELDS:
            raise ValueError(f"column mapping: required field {name!r} needs a column name")
        changes[name] = column or None
    return replace(base, **changes)  # type: ignore[arg-type]


def detect_mapping(columns: Sequence[str]) -> ColumnMapping:
    """HANDBOOK if all of its required columns are present, else the default ColumnMapping."""
    present = set(columns)
    if all(column in present for column in HANDBOOK.required().values()):
        return HANDBOOK
    return ColumnMapping()


class Row(NamedTuple):
    """One record: its line in the file, the transaction, and its fraud label (None if none)."""

    line: int
    transaction: Transaction
    fraud: bool | None


def label_for(row: Row, delay_ms: int) -> Label | None:
    """The Label of ``row``, known ``delay_ms`` after the transaction; None if it has no label."""
    if row.fraud is None:
        return None
    if delay_ms < 0:
        raise ValueError(f"label delay must be >= 0 ms, got {delay_ms}")
    tx = row.transaction
    return Label(
        transaction_id=tx.transaction_id,
        customer_id=tx.customer_id,
        terminal_id=tx.terminal_id,
        fraud=row.fraud,
        transaction_time_ms=tx.event_time_ms,
        event_time_ms=tx.event_time_ms + delay_ms,
    )


# --------------------------------------------------------------------------------------------
# Value parsing


class _FieldError(Exception):
    """A bad value in one field; the reader adds ``path:line:`` in front."""

    def __init__(self, column: str, value: object, reason: str | None = None) -> None:
        if value is None or (isinstance(value, str) and not value.strip()):
            message = f"field {column!r}: missing value"
        else:
            message = f"field {column!r}: bad value {_show(value)}"
            if reason:
                message += f" ({reason})"
        super().__init__(message)


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = _EPOCH.toordinal()
#: Epoch values with an absolute value below this are seconds, from it on milliseconds.
EPOCH_MS_THRESHOLD = 100_000_000_000
_MAX_OFFSET_MINUTES = 1439

_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
_TOD_RE = re.compile(r"(\d{2}):(\d{2}):(\d{2})", re.ASCII)
_INT_RE = re.compile(r"[+-]?\d+", re.ASCII)
_DECIMAL_RE = re.compile(r"[+-]?\d+\.\d*", re.ASCII)
_POW10: tuple[int, ...] = tuple(10**i for i in range(10))
_CACHE_LIMIT = 100_000


def _datetime_ms(value: datetime) -> tuple[int, int | None]:
    """(UTC epoch ms, offset minutes or None if naive) of a datetime; naive is UTC."""
    offset = value.utcoffset()
    delta = (value.replace(tzinfo=UTC) if offset is None else value) - _EPOCH
    ms = delta.days * _DAY_MS + delta.seconds * 1000 + delta.microseconds // 1000
    if offset is None:
        return ms, None
    return ms, int(offset.total_seconds()) // 60


def _epoch_ms(value: int) -> int:
    ms = value * 1000 if -EPOCH_MS_THRESHOLD < value < EPOCH_MS_THRESHOLD else value
    if not _INT64_MIN <= ms <= _INT64_MAX:
        raise ValueError("epoch value out of range")
    return ms


def _decimal_epoch_ms(value: Decimal) -> int:
    if not value.is_finite():
        raise ValueError("not a finite number")
    if -EPOCH_MS_THRESHOLD < value < EPOCH_MS_THRESHOLD:
        value = value.scaleb(3)
    ms = int(value.to_integral_value(rounding=ROUND_FLOOR))
    if not _INT64_MIN <= ms <= _INT64_MAX:
        raise ValueError("epoch value out of range")
    return ms


class _TimeParser:
    """Event-time parser with caches for the fixed ``YYYY-MM-DD HH:MM:SS`` layout.

    ``dates`` maps ``"YYYY-MM-DD"`` to the epoch ms of its midnight, ``tods`` maps ``"HH:MM:SS"``
    to ms since midnight; only valid strings are cached, so a hit in both is a valid time.
    """

    def __init__(self) -> None:
        self.dates: dict[str, int] = {}
        self.tods: dict[str, int] = {}

    def _date(self, text: str) -> int | None:
        ms = self.dates.get(text)
        if ms is not None:
            return ms
        match = _DATE_RE.fullmatch(text)
        if match is None:
            return None
        try:
            day = date(int(match[1]), int(match[2]), int(match[3]))
        except ValueError:
            return None
        ms = (day.toordinal() - _EPOCH_ORDINAL) * _DAY_MS
        if len(self.dates) >= _CACHE_LIMIT:
            self.dates.clear()
        self.dates[text] = ms
        return ms

    def _tod(self, text: str) -> int | None:
        ms = self.tods.get(text)
        if ms is not None:
            return ms
        match = _TOD_RE.fullmatch(text)
        if match is None:
            return None
        hours, minutes, seconds = int(match[1]), int(match[2]), int(match[3])
        if hours > 23 or minutes > 59 or seconds > 59:
            return None
        ms = ((hours * 60 + minutes) * 60 + seconds) * 1000
        self.tods[text] = ms  # at most 86,400 valid keys
        return ms

    def parse(self, value: object) -> tuple[int, int | None]:
        """(UTC epoch ms, offset minutes from the value or None); raises ValueError."""
        if isinstance(value, str):
            text = value.strip()
            if len(text) == 19 and text[10] in " T":
                day = self._date(text[:10])
                tod = self._tod(text[11:])
                if day is not None and tod is not None:
                    return day + tod, None
            if _INT_RE.fullmatch(text):
                return _epoch_ms(int(text)), None
            if _DECIMAL_RE.fullmatch(text):
                return _decimal_epoch_ms(Decimal(text)), None
            if len(text) > 10 and text[4] == "-" and text[10] not in "Tt ":
                # fromisoformat() takes any character between date and time
                raise ValueError("not a date-time")
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                raise ValueError("not a date-time") from None
            return _datetime_ms(parsed)
        if isinstance(value, bool):
            raise ValueError("not a date-time")
        if isinstance(value, int):
            return _epoch_ms(value), None
        if isinstance(value, float):
            return _decimal_epoch_ms(Decimal(repr(value))), None
        if isinstance(value, datetime):
            return _datetime_ms(value)
        if isinstance(value, date):
            return (value.toordinal() - _EPOCH_ORDINAL) * _DAY_MS, None
        raise ValueError("not a date-time")


def parse_event_time(value: object) -> tuple[int, int | None]:
    """Parse one event-time value: (UTC epoch ms, UTC offset minutes if the value has one).

    See the module docstring for the accepted forms. Raises ValueError.
    """
    return _TimeParser().parse(value)


def _ident(value: object, column: str) -> str:
    """An id column's value as text (slow path: the fast path is a non-empty str)."""
    if isinstance(value, str):
        if value.strip():
            return value
    elif isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    elif isinstance(value, float) and value.is_integer():
        return str(int(value))
    raise _FieldError(column, value)


def _optional_text(value: object, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _FieldError(column, value)


def _currency(value: object, column: str, default: str) -> str:
    if value is None:
        return default
    if isinstance(value, str):
        code = value.strip().upper()
        if not code:
            return default
        if code in EXPONENTS:
            return code
        raise _FieldError(column, value, f"unknown currency {code!r}")
    raise _FieldError(column, value, "not a currency code")


def _amount(value: object, currency: str, column: str) -> int:
    if value is None or value == "" or isinstance(value, bool):
        raise _FieldError(column, value)
    if not isinstance(value, str | int | float | Decimal):
        raise _FieldError(column, value, "not a number")
    try:
        minor = to_minor(value, currency)
    except CurrencyError as exc:
        raise _FieldError(column, value, str(exc)) from None
    if not _INT64_MIN <= minor <= _INT64_MAX:
        raise _FieldError(column, value, "out of range")
    return minor


def _offset(value: object, column: str) -> int | None:
    """Offset minutes, or None for an empty cell."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if _INT_RE.fullmatch(text) is None:
            raise _FieldError(column, value, "not an integer number of minutes")
        minutes = int(text)
    elif isinstance(value, int) and not isinstance(value, bool):
        minutes = value
    elif isinstance(value, float) and value.is_integer():
        minutes = int(value)
    else:
        raise _FieldError(column, value, "not an integer number of minutes")
    if abs(minutes) > _MAX_OFFSET_MINUTES:
        raise _FieldError(column, value, f"offset must be within +-{_MAX_OFFSET_MINUTES} minutes")
    return minutes


def _coordinate(value: object, column: str, limit: float) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise _FieldError(column, value, "not a number")
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            raise _FieldError(column, value, "not a number") from None
    elif isinstance(value, int | float | Decimal):
        number = float(value)
    else:
        raise _FieldError(column, value, "not a number")
    if not math.isfinite(number) or abs(number) > limit:
        raise _FieldError(column, value, f"must be within +-{limit:g} degrees")
    return number


_FRAUD_TEXT: dict[str, bool | None] = {
    "": None,
    "0": False,
    "1": True,
    "false": False,
    "true": True,
}


def _fraud(value: object, column: str) -> bool | None:
    if value is None:
        return None
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _FRAUD_TEXT:
            return _FRAUD_TEXT[key]
        raise _FieldError(column, value, "expected 0/1 or true/false")
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    raise _FieldError(column, value, "expected 0/1 or true/false")


# --------------------------------------------------------------------------------------------
# Row conversion

_Converter = Callable[[Sequence[Any], int], Row]


def _make_converter(
    mapping: ColumnMapping, index: dict[str, int], default_currency: str
) -> _Converter:
    """A function turning one record's values (indexed as in ``index``) into a Row.

    ``index`` maps a field name to its position in the value sequence; optional fields that are
    not in the file are not in ``index``. Raises _FieldError on a bad value.
    """
    i_tid, i_cid, i_term = index["transaction_id"], index["customer_id"], index["terminal_id"]
    i_amount, i_time = index["amount"], index["event_time"]
    i_cur = index.get("currency", -1)
    i_off = index.get("utc_offset_minutes", -1)
    i_lat, i_lon = index.get("latitude", -1), index.get("longitude", -1)
    i_dev, i_fraud = index.get("device_id", -1), index.get("fraud", -1)
    c_tid, c_cid, c_term = mapping.transaction_id, mapping.customer_id, mapping.terminal_id
    c_amount, c_time = mapping.amount, mapping.event_time
    c_cur = mapping.currency or ""
    c_off = mapping.utc_offset_minutes or ""
    c_lat, c_lon = mapping.latitude or "", mapping.longitude or ""
    c_dev, c_fraud = mapping.device_id or "", mapping.fraud or ""

    times = _TimeParser()
    dates, tods, parse_time = times.dates, times.tods, times.parse
    exponents, pow10, fraud_text = EXPONENTS, _POW10, _FRAUD_TEXT
    int64_max = _INT64_MAX

    def convert(values: Sequence[Any], line: int) -> Row:
        tid = values[i_tid]
        if type(tid) is not str or not tid:
            tid = _ident(tid, c_tid)
        cid = values[i_cid]
        if type(cid) is not str or not cid:
            cid = _ident(cid, c_cid)
        term = values[i_term]
        if type(term) is not str or not term:
            term = _ident(term, c_term)

        if i_cur < 0:
            currency = default_currency
        else:
            currency = values[i_cur]
            if type(currency) is not str or currency not in exponents:
                currency = _currency(currency, c_cur, default_currency)

        raw = values[i_amount]
        exp = exponents[currency]
        if type(raw) is str:
            # Fast path for plain "123.45"; anything else goes through to_minor.
            whole, _, frac = raw.partition(".")
            if (
                len(frac) <= exp
                and whole.isdigit()
                and whole.isascii()
                and (not frac or (frac.isdigit() and frac.isascii()))
                and len(whole) < 16
            ):
                amount = int(whole) * pow10[exp]
                if frac:
                    amount += int(frac) * pow10[exp - len(frac)]
            else:
                amount = _amount(raw, currency, c_amount)
        else:
            amount = _amount(raw, currency, c_amount)

        stamp = values[i_time]
        time_offset: int | None = None
        if (
            type(stamp) is str
            and len(stamp) == 19
            and (day := dates.get(stamp[:10])) is not None
            and (tod := tods.get(stamp[11:])) is not None
            and stamp[10] in " T"
        ):
            event_ms = day + tod
        else:
            if stamp is None or stamp == "":
                raise _FieldError(c_time, stamp)
            try:
                event_ms, time_offset = parse_time(stamp)
            except ValueError as exc:
                raise _FieldError(c_time, stamp, str(exc)) from None
            if not -int64_max <= event_ms <= int64_max:
                raise _FieldError(c_time, stamp, "out of range")

        offset = _offset(values[i_off], c_off) if i_off >= 0 else None
        if offset is None:
            offset = time_offset or 0

        latitude = _coordinate(values[i_lat], c_lat, 90.0) if i_lat >= 0 else None
        longitude = _coordinate(values[i_lon], c_lon, 180.0) if i_lon >= 0 else None

        if i_dev >= 0:
            device = values[i_dev]
            if type(device) is not str:
                device = _optional_text(device, c_dev)
        else:
            device = ""

        fraud: bool | None = None
        if i_fraud >= 0:
            label = values[i_fraud]
            if type(label) is str and label in fraud_text:
                fraud = fraud_text[label]
            else:
                fraud = _fraud(label, c_fraud)

        return Row(
            line,
            Transaction(
                transaction_id=tid,
                customer_id=cid,
                terminal_id=term,
                amount_minor=amount,
                currency=currency,
                event_time_ms=event_ms,
                utc_offset_minutes=offset,
                latitude=latitude,
                longitude=longitude,
                device_id=device,
            ),
            fraud,
        )

    return convert


# --------------------------------------------------------------------------------------------
# Files

_SUFFIXES: dict[str, tuple[str, bool]] = {
    ".csv": ("csv", False),
    ".csv.gz": ("csv", True),
    ".jsonl": ("jsonl", False),
    ".jsonl.gz": ("jsonl", True),
    ".ndjson": ("jsonl", False),
    ".ndjson.gz": ("jsonl", True),
    ".parquet": ("parquet", False),
}
_PARQUET_BATCH_ROWS = 65_536


def _detect_format(path: Path) -> tuple[str, bool]:
    name = path.name.lower()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return _SUFFIXES[suffix]
    raise SourceError(f"{path}: unknown file type; expected one of {', '.join(sorted(_SUFFIXES))}")


def _open_text(path: Path, compressed: bool, newline: str | None) -> IO[str]:
    if compressed:
        return gzip.open(path, "rt", encoding="utf-8-sig", newline=newline)
    return open(path, encoding="utf-8-sig", newline=newline)


def _read_error(path: Path, line: int, exc: Exception) -> SourceError:
    """A SourceError for an I/O, encoding, compression or CSV syntax error near ``line``."""
    where = f"{path}:{line}" if line > 0 else str(path)
    if isinstance(exc, UnicodeDecodeError):
        return SourceError(f"{where}: not valid UTF-8 text")
    if isinstance(exc, gzip.BadGzipFile | EOFError | zlib.error):
        return SourceError(f"{where}: corrupt or truncated gzip data ({exc})")
    if isinstance(exc, OSError) and exc.strerror:
        return SourceError(f"{where}: {exc.strerror}")
    return SourceError(f"{where}: {exc}")


_READ_ERRORS = (OSError, EOFError, zlib.error, UnicodeDecodeError, csv.Error)


def _import_parquet(path: Path) -> Any:
    try:
        return importlib.import_module("pyarrow.parquet")
    except ImportError:
        raise SourceError(
            f"{path}: reading Parquet needs pyarrow, which is not installed (pip install pyarrow)"
        ) from None


def _columns_list(columns: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(repr(c) for c in columns[:limit])
    if len(columns) > limit:
        shown += f", ... ({len(columns) - limit} more)"
    return shown or "(none)"


class Source:
    """A transaction file with its columns and mapping; iterate it for the rows (streaming).

    Each iteration reopens the file, so a Source can be read more than once.
    """

    def __init__(
        self,
        path: Path,
        format: str,
        compressed: bool,
        columns: tuple[str, ...],
        mapping: ColumnMapping,
        default_currency: str,
    ) -> None:
        self.path = path
        self.format = format
        self.compressed = compressed
        self.columns = columns
        self.mapping = mapping
        self.default_currency = default_currency
        self._check_columns()
        present = set(columns)
        #: Optional fields that are mapped but whose column is not in the file.
        self.absent: tuple[str, ...] = tuple(
            name for name, column in mapping.optional().items() if column not in present
        )
        #: Field -> column actually read (required fields plus the present optional ones).
        self.fields: dict[str, str] = {
            name: column
            for name, column in (mapping.required() | mapping.optional()).items()
            if column in present
        }

    def __repr__(self) -> str:
        return f"Source({str(self.path)!r}, format={self.format!r}, mapping={self.mapping!r})"

    def _check_columns(self) -> None:
        present = set(self.columns)
        missing = [
            f"{column!r} ({name})"
            for name, column in self.mapping.required().items()
            if column not in present
        ]
        if missing:
            raise SourceError(
                f"{self.path}: missing required column(s) {', '.join(missing)}; "
                f"the file has {_columns_list(self.columns)}"
            )
        wanted = set(self.mapping.required().values()) | set(self.mapping.optional().values())
        duplicated = sorted({c for c in self.columns if c in wanted and self.columns.count(c) > 1})
        if duplicated:
            raise SourceError(
                f"{self.path}: column(s) {_columns_list(duplicated)} appear more than once"
            )

    def __iter__(self) -> Iterator[Row]:
        if self.format == "csv":
            return self._iter_csv()
        if self.format == "jsonl":
            return self._iter_jsonl()
        return self._iter_parquet()

    # -- CSV --------------------------------------------------------------------------------

    def _iter_csv(self) -> Iterator[Row]:
        path = self.path
        position = {column: i for i, column in enumerate(self.columns)}
        index = {name: position[column] for name, column in self.fields.items()}
        convert = _make_converter(self.mapping, index, self.default_currency)
        width = len(self.columns)
        end = 0  # last physical line of the previous record
        line = 0
        try:
            with _open_text(path, self.compressed, newline="") as handle:
                reader = csv.reader(handle, strict=True)
                header_seen = False
                for record in reader:
                    line = end + 1
                    end = reader.line_num
                    if not record:
                        continue
                    if not header_seen:
                        header_seen = True
                        continue
                    if len(record) != width:
                        raise SourceError(
                            f"{path}:{line}: expected {width} fields, got {len(record)}"
                        )
                    yield convert(record, line)
        except _FieldError as exc:
            raise SourceError(f"{path}:{line}: {exc}") from None
        except _READ_ERRORS as exc:
            raise _read_error(path, end + 1, exc) from None

    # -- JSONL ------------------------------------------------------------------------------

    def _iter_jsonl(self) -> Iterator[Row]:
        path = self.path
        names = list(self.fields.values())
        index = {name: i for i, name in enumerate(self.fields)}
        convert = _make_converter(self.mapping, index, self.default_currency)
        loads = json.loads
        line = 0
        try:
            with _open_text(path, self.compressed, newline=None) as handle:
                for line, text in enumerate(handle, 1):
                    if text.isspace():
                        continue
                    obj = _json_object(path, line, text, loads)
                    yield convert([obj.get(name) for name in names], line)
        except _FieldError as exc:
            raise SourceError(f"{path}:{line}: {exc}") from None
        except _READ_ERRORS as exc:
            raise _read_error(path, line + 1, exc) from None

    # -- Parquet ----------------------------------------------------------------------------

    def _iter_parquet(self) -> Iterator[Row]:
        path = self.path
        pq = _import_parquet(path)
        names = list(self.fields.values())
        index = {name: i for i, name in enumerate(self.fields)}
        convert = _make_converter(self.mapping, index, self.default_currency)
        line = 0
        try:
            parquet = pq.ParquetFile(path)
            for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=names):
                columns = [_arrow_to_python(batch.column(name)) for name in names]
                for values in zip(*columns, strict=True):
                    line += 1
                    yield convert(values, line)
        except _FieldError as exc:
            raise SourceError(f"{path}:{line}: {exc}") from None
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise _read_error(path, line + 1, exc) from None


def _json_object(path: Path, line: int, text: str, loads: Callable[[str], Any]) -> dict[str, Any]:
    try:
        obj = loads(text)
    except ValueError as exc:
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise SourceError(f"{path}:{line}: invalid JSON ({message})") from None
    if not isinstance(obj, dict):
        raise SourceError(f"{path}:{line}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _arrow_to_python(array: Any) -> list[Any]:
    """A pyarrow array as Python values; timestamps become aware UTC datetimes (ms exact)."""
    pa = importlib.import_module("pyarrow")
    kind = array.type
    if pa.types.is_timestamp(kind):
        # Read the raw integers: to_pylist() would need pandas for nanoseconds.
        per_ms = {"s": None, "ms": 1, "us": 1_000, "ns": 1_000_000}[kind.unit]
        raw = array.cast(pa.int64()).to_pylist()
        zone = _arrow_zone(kind.tz)
        result: list[Any] = []
        for value in raw:
            if value is None:
                result.append(None)
                continue
            ms = value * 1000 if per_ms is None else value // per_ms
            stamp = _EPOCH + timedelta(milliseconds=ms)
            result.append(stamp if zone is None else stamp.astimezone(zone))
        return result
    values: list[Any] = array.to_pylist()
    return values


def _arrow_zone(tz: str | None) -> Any:
    """The tzinfo of an Arrow timestamp's zone (None for naive/UTC)."""
    if not tz or tz in ("UTC", "Etc/UTC", "+00:00", "Z"):
        return None
    match = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", tz)
    if match:
        from datetime import timezone

        minutes = int(match[2]) * 60 + int(match[3])
        return timezone(timedelta(minutes=-minutes if match[1] == "-" else minutes))
    from zoneinfo import ZoneInfo

    return ZoneInfo(tz)


def _read_header(path: Path, fmt: str, compressed: bool) -> tuple[str, ...]:
    """The column names; raises SourceError for an empty or unreadable file."""
    if fmt == "parquet":
        pq = _import_parquet(path)
        try:
            parquet = pq.ParquetFile(path)
        except OSError as exc:
            raise _read_error(path, 0, exc) from None
        except Exception as exc:  # pyarrow raises its own ArrowInvalid for a non-Parquet file
            raise SourceError(f"{path}: not a Parquet file ({exc})") from None
        if parquet.metadata.num_rows == 0:
            raise SourceError(f"{path}: empty file")
        return tuple(str(name) for name in parquet.schema_arrow.names)

    line = 0
    try:
        with _open_text(path, compressed, newline="" if fmt == "csv" else None) as handle:
            if fmt == "csv":
                reader = csv.reader(handle, strict=True)
                header: list[str] | None = None
                for record in reader:
                    line = reader.line_num
                    if not record:
                        continue
                    if header is None:
                        header = record
                        continue
                    return tuple(name.strip() for name in header)
                if header is None:
                    raise SourceError(f"{path}: empty file")
                raise SourceError(f"{path}: empty file (a header but no rows)")
            for line, text in enumerate(handle, 1):
                if text.isspace():
                    continue
                return tuple(str(key) for key in _json_object(path, line, text, json.loads))
            raise SourceError(f"{path}: empty file")
    except _READ_ERRORS as exc:
        raise _read_error(path, line + 1 if line else 0, exc) from None


def open_source(
    path: Path, mapping: ColumnMapping | None = None, default_currency: str = "EUR"
) -> Source:
    """Open a transaction file: detect its format, read its header and check the mapping.

    Without ``mapping`` the mapping is :func:`detect_mapping` of the file's columns. Raises
    SourceError for an unknown suffix, an empty or unreadable file, or missing required columns;
    bad values are only found while iterating the returned Source.
    """
    path = Path(path)
    if default_currency not in EXPONENTS:
        raise SourceError(f"unknown default currency {default_currency!r}")
    fmt, compressed = _detect_format(path)
    columns = _read_header(path, fmt, compressed)
    if mapping is None:
        mapping = detect_mapping(columns)
    return Source(path, fmt, compressed, columns, mapping, default_currency)
