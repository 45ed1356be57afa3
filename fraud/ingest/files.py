"""Read a transaction file (CSV, JSONL, Parquet) into ``Transaction`` messages and fraud labels.

A :class:`ColumnMapping` names the file's column for every ``Transaction`` field.
:func:`open_source` reads the header, checks that the required columns are there and returns a
:class:`Source`; iterating it streams the file (constant memory) and yields one :class:`Row` per
record. A refused row stops the iteration with a one-line :class:`SourceError`::

    data.csv:1234: field 'TX_AMOUNT': bad value 'abc' (amount 'abc' is not a number)

Formats, chosen by suffix: ``.csv``, ``.jsonl``/``.ndjson`` (also ``.gz``-compressed) and
``.parquet`` (only when ``pyarrow`` is importable).

Values: each transaction field is parsed by ``fraud.ingest.fields``, the parsers the HTTP
gateway uses, whose module doc lists the accepted forms: ids as text or integers, the amount in
decimal major units converted exactly to minor units of the row's currency (``default_currency``
when the column is absent or the cell empty), the event time as ``YYYY-MM-DD HH:MM:SS`` (UTC,
the handbook's format, with a cached fast path), ISO 8601 with an offset (which becomes
``utc_offset_minutes`` unless the offset column has a value for the row) or an epoch in seconds
or milliseconds (:func:`parse_event_time`), or a ``datetime`` from Parquet. An empty cell of an
optional field means "not given". A row is then checked by
``fraud.contracts.wire.validate_transaction`` as the worker checks it (at the Source's clock,
with ``max_future_ms``), so a row the worker would dead-letter (a negative amount, an offset
beyond 14 hours, an event time before 1970 or too far ahead, a latitude without a longitude, an
id over 256 characters, ...) is refused here, naming its column.

The label column is read here: **fraud** is ``0``/``1``/``true``/``false`` (case-insensitive)
or a JSON boolean; an empty cell or ``null`` means "no label" (``Row.fraud is None``).

Line numbers are physical lines: the CSV header is line 1 (a quoted field spanning several lines
is reported at its first line); JSONL lines count from 1; for Parquet the "line" is the 1-based
row number.
"""

from __future__ import annotations

import csv
import gzip
import importlib
import json
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, NamedTuple

from fraud.contracts.currency import EXPONENTS
from fraud.ingest.fields import Invalid, TransactionBuilder, parse_event_time, wall_ms
from fraud.settings import Settings
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
    """An unreadable transaction file or a refused row; one-line message, ``path[:line]: ...``.

    ``field`` names the field to blame for a refused row (``fraud.ingest.fields`` names, or
    ``"fraud"`` for the label), else None.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


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
# Row conversion: the transaction's fields go through fraud.ingest.fields, the label is ours


class _FieldError(Exception):
    """A refused row at ``line``; the Source adds ``path:line:`` in front."""

    def __init__(self, message: str, field: str | None, line: int) -> None:
        super().__init__(message)
        self.field = field
        self.line = line


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _problem(column: str, value: object, detail: str | None, missing_reason: bool) -> str:
    """``field 'COLUMN': missing value`` or ``field 'COLUMN': bad value 'X' (detail)``."""
    if value is None or (isinstance(value, str) and not value.strip()):
        message = f"field {column!r}: missing value"
        return message if missing_reason or not detail else f"{message} ({detail})"
    message = f"field {column!r}: bad value {_show(value)}"
    return f"{message} ({detail})" if detail else message


_FRAUD_TEXT: dict[str, bool | None] = {
    "": None,
    "0": False,
    "1": True,
    "false": False,
    "true": True,
}


def _fraud(value: object) -> bool | str | None:
    """The label, or why the value is not one."""
    if value is None:
        return None
    if isinstance(value, str):
        key = value.strip().lower()
        if key in _FRAUD_TEXT:
            return _FRAUD_TEXT[key]
    elif isinstance(value, bool):
        return value
    elif isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    return "expected 0/1 or true/false"


_CLOCK_ROWS = 1000


class _Converter:
    """One record's values (positions given by ``index``, field -> position) as a Row.

    Optional fields whose column is not in the file are not in ``index``. Raises _FieldError
    for a refused row: a bad value, or a transaction the worker would dead-letter at
    ``clock()``.
    """

    def __init__(
        self,
        mapping: ColumnMapping,
        index: dict[str, int],
        builder: TransactionBuilder,
        clock: Callable[[], int],
    ) -> None:
        self.positions = tuple((name, i) for name, i in index.items() if name != "fraud")
        self.fraud_position = index.get("fraud", -1)
        self.columns: dict[str, str] = {
            name: column for name in _FIELD_NAMES if (column := getattr(mapping, name))
        }
        self.builder = builder
        self.clock = clock
        self._now_ms = 0
        self._rows_at_now = 0

    def _now(self) -> int:
        """The clock, read once per ``_CLOCK_ROWS`` rows: an older ``now`` only makes the
        future check stricter, so a row is never accepted that the worker would refuse."""
        if self._rows_at_now == 0:
            self._now_ms = self.clock()
            self._rows_at_now = _CLOCK_ROWS
        self._rows_at_now -= 1
        return self._now_ms

    def row(self, values: Sequence[Any], line: int) -> Row:
        named = {name: values[i] for name, i in self.positions}
        tx = self.builder.build(named, self._now())
        if isinstance(tx, Invalid):
            if tx.field is None:
                raise _FieldError(tx.detail, None, line)
            column = self.columns.get(tx.field, tx.field)
            missing_reason = tx.reason.startswith("missing_")
            message = _problem(column, named.get(tx.field), tx.detail, missing_reason)
            raise _FieldError(message, tx.field, line)
        fraud: bool | None = None
        if self.fraud_position >= 0:
            label = values[self.fraud_position]
            if type(label) is str and label in _FRAUD_TEXT:
                fraud = _FRAUD_TEXT[label]
            else:
                parsed = _fraud(label)
                if isinstance(parsed, str):
                    message = _problem(self.columns["fraud"], label, parsed, False)
                    raise _FieldError(message, "fraud", line)
                fraud = parsed
        return Row(line, tx, fraud)


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
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


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
        *,
        clock: Callable[[], int] = wall_ms,
        max_future_ms: int = Settings.max_future_ms,
    ) -> None:
        self.path = path
        self.format = format
        self.compressed = compressed
        self.columns = columns
        self.mapping = mapping
        self.default_currency = default_currency
        self.clock = clock
        self.max_future_ms = max_future_ms
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

    def _converter(self, index: dict[str, int]) -> _Converter:
        builder = TransactionBuilder(
            max_future_ms=self.max_future_ms, default_currency=self.default_currency
        )
        return _Converter(self.mapping, index, builder, self.clock)

    def __iter__(self) -> Iterator[Row]:
        if self.format == "csv":
            rows = self._iter_csv()
        elif self.format == "jsonl":
            rows = self._iter_jsonl()
        else:
            rows = self._iter_parquet()
        try:
            yield from rows
        except _FieldError as exc:
            raise SourceError(f"{self.path}:{exc.line}: {exc}", exc.field) from None

    def _by_name(self) -> tuple[list[str], Callable[[Sequence[Any], int], Row]]:
        """The columns to read, in field order, and the converter of their values."""
        names = list(self.fields.values())
        return names, self._converter({name: i for i, name in enumerate(self.fields)}).row

    # -- CSV --------------------------------------------------------------------------------

    def _iter_csv(self) -> Iterator[Row]:
        path = self.path
        position = {column: i for i, column in enumerate(self.columns)}
        index = {name: position[column] for name, column in self.fields.items()}
        convert = self._converter(index).row
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
        except _READ_ERRORS as exc:
            raise _read_error(path, end + 1, exc) from None

    # -- JSONL ------------------------------------------------------------------------------

    def _iter_jsonl(self) -> Iterator[Row]:
        path = self.path
        names, convert = self._by_name()
        loads = json.loads
        line = 0
        try:
            with _open_text(path, self.compressed, newline=None) as handle:
                for line, text in enumerate(handle, 1):
                    if text.isspace():
                        continue
                    obj = _json_object(path, line, text, loads)
                    yield convert([obj.get(name) for name in names], line)
        except _READ_ERRORS as exc:
            raise _read_error(path, line + 1, exc) from None

    # -- Parquet ----------------------------------------------------------------------------

    def _iter_parquet(self) -> Iterator[Row]:
        path = self.path
        pq = _import_parquet(path)
        names, convert = self._by_name()
        line = 0
        try:
            parquet = pq.ParquetFile(path)
            for batch in parquet.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=names):
                columns = [_arrow_to_python(batch.column(name)) for name in names]
                for values in zip(*columns, strict=True):
                    line += 1
                    yield convert(values, line)
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
    path: Path,
    mapping: ColumnMapping | None = None,
    default_currency: str = "EUR",
    *,
    clock: Callable[[], int] = wall_ms,
    max_future_ms: int = Settings.max_future_ms,
) -> Source:
    """Open a transaction file: detect its format, read its header and check the mapping.

    Without ``mapping`` the mapping is :func:`detect_mapping` of the file's columns. Raises
    SourceError for an unknown suffix, an empty or unreadable file, or missing required columns;
    bad values are only found while iterating the returned Source, where each row is also
    checked as the worker checks it at ``clock()`` (epoch ms), with ``max_future_ms``.
    """
    path = Path(path)
    if default_currency not in EXPONENTS:
        raise SourceError(f"unknown default currency {default_currency!r}")
    fmt, compressed = _detect_format(path)
    columns = _read_header(path, fmt, compressed)
    if mapping is None:
        mapping = detect_mapping(columns)
    return Source(
        path,
        fmt,
        compressed,
        columns,
        mapping,
        default_currency,
        clock=clock,
        max_future_ms=max_future_ms,
    )
