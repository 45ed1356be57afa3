"""One parser per transaction field, shared by file replay and the HTTP gateway.

Each parser takes the raw value of one field (a CSV cell, a JSON or Parquet value) and returns
the field's value or an :class:`Invalid` naming the field and saying why: errors are values
here, and the edges turn them into their own form (``fraud.ingest.files`` a one-line
``file:line: field 'COLUMN': bad value ...``, ``fraud.ingest.gateway`` a 400 JSON body).

:class:`TransactionBuilder` builds a ``Transaction`` from a mapping of named fields (the field
names below) and then runs ``fraud.contracts.wire.validate_transaction``, the check the worker
applies before it dead-letters a transaction. So a row or a document is refused at the edge
exactly when the worker would refuse it, given the same ``now_ms`` and ``max_future_ms``.

Field names and accepted values:

* ``transaction_id``, ``customer_id``, ``terminal_id``: text kept as is (not blank), or an
  integer (an integral float too, as a JSON or Parquet reader may give) written in decimal; at
  most ``fraud.contracts.wire.MAX_ID_LENGTH`` characters.
* ``currency``: an ISO 4217 code (upper-cased); absent, null or blank means the default.
* ``amount``: major units, a decimal string or a number, converted exactly to minor units with
  the currency's exponent (``fraud.contracts.currency.to_minor``: more decimals than the
  currency has is an error, never a rounding); or ``amount_minor``: integer minor units (an
  integer or a string of digits). Exactly one of the two; never negative.
* ``event_time``: see :func:`parse_event_time`; or ``event_time_ms``: epoch milliseconds (an
  integer or a string of digits). Exactly one of the two. After 1970 and at most
  ``max_future_ms`` after ``now_ms``.
* ``utc_offset_minutes``: integer minutes within ``MAX_UTC_OFFSET_MINUTES``; absent or blank
  means the offset of an ISO ``event_time``, else 0.
* ``latitude`` and ``longitude``: degrees within range, finite, both or neither.
* ``device_id``: text (stripped) or an integer; absent means none.

A field that is absent, null or a blank string is "missing".
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_FLOOR, Decimal
from typing import Final

from fraud.contracts.currency import EXPONENTS, CurrencyError, to_minor
from fraud.contracts.units import DAY_MS, INT64_MAX, INT64_MIN
from fraud.contracts.wire import (
    MAX_LATITUDE,
    MAX_LONGITUDE,
    MAX_UTC_OFFSET_MINUTES,
    Rejected,
    validate_transaction,
)
from fraud.v1.transaction_pb2 import Transaction

__all__ = [
    "EPOCH_MS_THRESHOLD",
    "IDS",
    "Invalid",
    "TransactionBuilder",
    "field_of",
    "not_utf8",
    "parse_amount",
    "parse_amount_minor",
    "parse_coordinate",
    "parse_currency",
    "parse_device",
    "parse_event_time",
    "parse_event_time_ms",
    "parse_id",
    "parse_offset",
    "wall_ms",
]

IDS: Final = ("transaction_id", "customer_id", "terminal_id")


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a field's value is refused: the field, a reason code and a one-line detail.

    Reason codes: ``missing_<field>``, ``wrong_type``, ``conflicting_fields`` and the worker's
    own (``invalid_amount``, ``unknown_currency``, ``invalid_event_time``, ...). ``field`` is
    ``None`` only for a worker reason that no field explains.
    """

    field: str | None
    reason: str
    detail: str


def wall_ms() -> int:
    """The wall clock in epoch milliseconds: the default clock of the edges."""
    return time.time_ns() // 1_000_000


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, str) and (not value or value.isspace()))


def _missing_field(field: str) -> Invalid:
    return Invalid(field, f"missing_{field}", "missing or empty")


_INT_RE = re.compile(r"[+-]?\d+", re.ASCII)
# Longer digit strings are out of int64 range anyway; int() of over 4,300 digits raises.
_MAX_DIGITS = 20
_POW10: tuple[int, ...] = tuple(10**i for i in range(10))


def _integer(value: object) -> int | None:
    """A JSON integer or a string of decimal digits (the protobuf JSON form of int64)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and _INT_RE.fullmatch(text := value.strip()):
        return _digits(text)
    return None


def _digits(text: str) -> int:
    """``int(text)`` of a string of decimal digits; one past int64 when it is longer than any
    int64 (so range checks refuse it) instead of the int() digit limit's ValueError."""
    if len(text.lstrip("+-").lstrip("0")) > _MAX_DIGITS:
        return INT64_MIN - 1 if text.startswith("-") else INT64_MAX + 1
    return int(text)


# --------------------------------------------------------------------------------------------
# Ids, currency, amount


def parse_id(field: str, value: object) -> str | Invalid:
    if type(value) is str and value and not value.isspace():
        text = value
    elif _missing(value):
        return _missing_field(field)
    elif isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, float) and value.is_integer():
        text = str(int(value))
    else:
        return Invalid(field, "wrong_type", "not text or an integer")
    return text


def parse_currency(value: object, default: str) -> str | Invalid:
    """The ISO 4217 code, ``default`` when missing."""
    if _missing(value):
        return default
    if not isinstance(value, str):
        return Invalid("currency", "wrong_type", "not a currency code")
    code = value.strip().upper()
    if code not in EXPONENTS:
        return Invalid("currency", "unknown_currency", f"unknown currency {code!r}")
    return code


def _checked_minor(field: str, minor: int, value: object) -> int | Invalid:
    if not INT64_MIN <= minor <= INT64_MAX:
        return Invalid(field, "invalid_amount", f"{field} {value!r} is out of range")
    if minor < 0:
        return Invalid(field, "invalid_amount", f"{field} {value!r} is negative")
    return minor


def parse_amount(value: object, currency: str) -> int | Invalid:
    """Major units in ``currency`` (a known code) as exact minor units."""
    exp = EXPONENTS[currency]
    if type(value) is str:
        # Plain "123.45" without going through Decimal; anything else goes to to_minor.
        whole, _, frac = value.partition(".")
        if (
            len(frac) <= exp
            and len(whole) < 16
            and whole.isdigit()
            and whole.isascii()
            and (not frac or (frac.isdigit() and frac.isascii()))
        ):
            minor = int(whole) * _POW10[exp]
            return minor + int(frac) * _POW10[exp - len(frac)] if frac else minor
    if _missing(value):
        return _missing_field("amount")
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        return Invalid("amount", "wrong_type", "not a number")
    try:
        minor = to_minor(value, currency)
    except CurrencyError as exc:
        return Invalid("amount", "invalid_amount", str(exc))
    return _checked_minor("amount", minor, value)


def parse_amount_minor(value: object) -> int | Invalid:
    """Integer minor units."""
    minor = _integer(value)
    if minor is None:
        return Invalid("amount_minor", "wrong_type", "not an integer")
    return _checked_minor("amount_minor", minor, value)


# --------------------------------------------------------------------------------------------
# Event time

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_ORDINAL = _EPOCH.toordinal()
#: Epoch values with an absolute value below this are seconds, from it on milliseconds.
EPOCH_MS_THRESHOLD = 100_000_000_000

_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})", re.ASCII)
_TOD_RE = re.compile(r"(\d{2}):(\d{2}):(\d{2})", re.ASCII)
_DECIMAL_RE = re.compile(r"[+-]?\d+\.\d*", re.ASCII)
_CACHE_LIMIT = 100_000


def _datetime_ms(value: datetime) -> tuple[int, int | None]:
    """(UTC epoch ms, offset minutes or None if naive) of a datetime; naive is UTC."""
    offset = value.utcoffset()
    delta = (value.replace(tzinfo=UTC) if offset is None else value) - _EPOCH
    ms = delta.days * DAY_MS + delta.seconds * 1000 + delta.microseconds // 1000
    if offset is None:
        return ms, None
    return ms, int(offset.total_seconds()) // 60


def _epoch_ms(value: int) -> int:
    ms = value * 1000 if -EPOCH_MS_THRESHOLD < value < EPOCH_MS_THRESHOLD else value
    if not INT64_MIN <= ms <= INT64_MAX:
        raise ValueError("epoch value out of range")
    return ms


def _decimal_epoch_ms(value: Decimal) -> int:
    if not value.is_finite():
        raise ValueError("not a finite number")
    if -EPOCH_MS_THRESHOLD < value < EPOCH_MS_THRESHOLD:
        value = value.scaleb(3)
    ms = int(value.to_integral_value(rounding=ROUND_FLOOR))
    if not INT64_MIN <= ms <= INT64_MAX:
        raise ValueError("epoch value out of range")
    return ms


def _date_ms(text: str) -> int | None:
    """Epoch ms of the midnight of ``"YYYY-MM-DD"``, None if it is not a date."""
    match = _DATE_RE.fullmatch(text)
    if match is None:
        return None
    try:
        day = date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None
    return (day.toordinal() - _EPOCH_ORDINAL) * DAY_MS


def _tod_ms(text: str) -> int | None:
    """Ms since midnight of ``"HH:MM:SS"``, None if it is not a time of day."""
    match = _TOD_RE.fullmatch(text)
    if match is None:
        return None
    hours, minutes, seconds = int(match[1]), int(match[2]), int(match[3])
    if hours > 23 or minutes > 59 or seconds > 59:
        return None
    return ((hours * 60 + minutes) * 60 + seconds) * 1000


def _cached(cache: dict[str, int], text: str, parse: Callable[[str], int | None]) -> int | None:
    """``parse(text)`` through ``cache``, which keeps valid strings only."""
    ms = cache.get(text)
    if ms is None:
        ms = parse(text)
        if ms is not None:
            if len(cache) >= _CACHE_LIMIT:
                cache.clear()
            cache[text] = ms
    return ms


class EventTimes:
    """Event-time parser with caches for the fixed ``YYYY-MM-DD HH:MM:SS`` layout.

    ``dates`` maps ``"YYYY-MM-DD"`` to the epoch ms of its midnight, ``tods`` maps ``"HH:MM:SS"``
    to ms since midnight; only valid strings are cached, so a hit in both is a valid time.
    """

    def __init__(self) -> None:
        self.dates: dict[str, int] = {}
        self.tods: dict[str, int] = {}

    def parse(self, value: object) -> tuple[int, int | None]:
        """(UTC epoch ms, offset minutes from the value or None); raises ValueError."""
        if isinstance(value, str):
            text = value.strip()
            if len(text) == 19 and text[10] in " T":
                day = _cached(self.dates, text[:10], _date_ms)
                tod = _cached(self.tods, text[11:], _tod_ms)
                if day is not None and tod is not None:
                    return day + tod, None
            if _INT_RE.fullmatch(text):
                return _epoch_ms(_digits(text)), None
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
            return (value.toordinal() - _EPOCH_ORDINAL) * DAY_MS, None
        raise ValueError("not a date-time")

    def field(self, value: object) -> tuple[int, int | None] | Invalid:
        """:meth:`parse` for the ``event_time`` field, an Invalid instead of ValueError."""
        if type(value) is str and len(value) == 19 and value[10] in " T":
            day = self.dates.get(value[:10])
            tod = self.tods.get(value[11:])
            if day is not None and tod is not None:
                return day + tod, None
        if _missing(value):
            return _missing_field("event_time")
        if isinstance(value, bool) or not isinstance(value, str | int | float | date):
            return Invalid("event_time", "wrong_type", "not a date-time")
        try:
            return self.parse(value)
        except ValueError as exc:
            return Invalid("event_time", "invalid_event_time", str(exc))


def parse_event_time(value: object) -> tuple[int, int | None]:
    """Parse one event-time value: (UTC epoch ms, UTC offset minutes if the value has one).

    Accepted forms:

    - ``"YYYY-MM-DD HH:MM:SS"`` (or with ``T``): naive, taken as UTC (the handbook's format;
      this layout has a cached fast path in :class:`EventTimes`);
    - ISO 8601 with fractional seconds and an offset, ``"2018-04-01T00:00:31.5+02:00"``:
      converted to UTC, and the offset (120) is returned. Without an offset the time is UTC.
      Fractions below a millisecond are dropped (truncated towards the past);
    - an integer epoch (a string of digits or an integer), decided by magnitude:
      ``|value| < 10**11`` is **seconds** (which covers every date up to the year 5138),
      anything larger is **milliseconds** (which covers every date from 1973-03-03 on). Decimal
      epoch seconds (``"1522540831.5"``, ``1522540831.5``) are also accepted;
    - a ``datetime`` / ``date`` (from Parquet): naive means UTC.

    Raises ValueError. The time is not checked against the worker's range here.
    """
    return EventTimes().parse(value)


def parse_event_time_ms(value: object) -> int | Invalid:
    ms = _integer(value)
    if ms is None:
        return Invalid("event_time_ms", "wrong_type", "not an integer")
    if not INT64_MIN <= ms <= INT64_MAX:
        return Invalid("event_time_ms", "invalid_event_time", f"{ms} is out of range")
    return ms


# --------------------------------------------------------------------------------------------
# Offset, location, device


def parse_offset(value: object) -> int | Invalid | None:
    """UTC offset minutes, or None when missing."""
    if _missing(value):
        return None
    minutes = _integer(value)
    if minutes is None:
        if not (isinstance(value, float) and value.is_integer()):
            return Invalid("utc_offset_minutes", "wrong_type", "not an integer number of minutes")
        minutes = int(value)
    if abs(minutes) > MAX_UTC_OFFSET_MINUTES:
        return Invalid(
            "utc_offset_minutes",
            "invalid_utc_offset",
            f"offset must be within +-{MAX_UTC_OFFSET_MINUTES} minutes",
        )
    return minutes


_LIMITS: Final = {"latitude": MAX_LATITUDE, "longitude": MAX_LONGITUDE}


def parse_coordinate(field: str, value: object) -> float | Invalid | None:
    """Degrees of ``latitude`` or ``longitude``, or None when missing."""
    if _missing(value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        return Invalid(field, "wrong_type", "not a number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except ValueError:
        return Invalid(field, "wrong_type", "not a number")
    except OverflowError:
        number = math.inf
    limit = _LIMITS[field]
    if not math.isfinite(number) or abs(number) > limit:
        return Invalid(field, "invalid_location", f"must be within +-{limit:g} degrees")
    return number


def parse_device(value: object) -> str | Invalid:
    """The device id, ``""`` when missing."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return Invalid("device_id", "wrong_type", "not text or an integer")


def not_utf8(texts: Mapping[str, str]) -> Invalid:
    """The refusal of the first of ``texts`` that has no UTF-8 form: a lone surrogate, as JSON's
    ``"\\ud800"`` decodes to."""
    for field, text in texts.items():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            detail = f"character {exc.start} is a lone surrogate, which UTF-8 cannot hold"
            return Invalid(field, f"invalid_{field}", detail)
    return Invalid(None, "invalid_text", "a text field has no UTF-8 form")


# --------------------------------------------------------------------------------------------
# A transaction from named fields


def field_of(rejected: Rejected, tx: Transaction, amount_field: str, time_field: str) -> str | None:
    """The field behind a ``validate_transaction`` reason about ``tx``."""
    for name in IDS:
        if rejected.reason.endswith(name):
            return name
    if rejected.reason == "invalid_location":
        if not tx.HasField("latitude"):
            return "latitude"
        if not tx.HasField("longitude"):
            return "longitude"
        lat = tx.latitude
        return "latitude" if not math.isfinite(lat) or abs(lat) > MAX_LATITUDE else "longitude"
    return {
        "invalid_amount": amount_field,
        "unknown_currency": "currency",
        "invalid_event_time": time_field,
        "invalid_utc_offset": "utc_offset_minutes",
    }.get(rejected.reason)


def _one_of(fields: Mapping[str, object], first: str, second: str) -> str | Invalid:
    """Which of two alternative fields is given: ``first`` when neither (it is then missing)."""
    has_first, has_second = not _missing(fields.get(first)), not _missing(fields.get(second))
    if has_first and has_second:
        return Invalid(first, "conflicting_fields", f"give {first} or {second}, not both")
    return second if has_second else first


class TransactionBuilder:
    """Named fields -> a Transaction the worker accepts, or the first field to blame.

    Keeps the event-time caches between calls: build one per file or request, not per row.
    """

    def __init__(self, *, max_future_ms: int, default_currency: str = "EUR") -> None:
        if default_currency not in EXPONENTS:
            raise ValueError(f"unknown default currency {default_currency!r}")
        self.max_future_ms = max_future_ms
        self.default_currency = default_currency
        self.times = EventTimes()

    def build(self, fields: Mapping[str, object], now_ms: int) -> Transaction | Invalid:
        """Parse every field, then check the result as the worker does at ``now_ms``.

        The common case (text ids, a known currency code, absent optional fields) skips the
        parsers' calls; the parsers decide everything else.
        """
        get = fields.get
        tid, cid, term = get("transaction_id"), get("customer_id"), get("terminal_id")
        if type(tid) is not str or not tid or tid.isspace():
            tid = parse_id("transaction_id", tid)
            if isinstance(tid, Invalid):
                return tid
        if type(cid) is not str or not cid or cid.isspace():
            cid = parse_id("customer_id", cid)
            if isinstance(cid, Invalid):
                return cid
        if type(term) is not str or not term or term.isspace():
            term = parse_id("terminal_id", term)
            if isinstance(term, Invalid):
                return term
        currency = get("currency")
        if currency is None:
            currency = self.default_currency
        elif type(currency) is not str or currency not in EXPONENTS:
            currency = parse_currency(currency, self.default_currency)
            if isinstance(currency, Invalid):
                return currency
        amount_field = (
            "amount" if get("amount_minor") is None else _one_of(fields, "amount", "amount_minor")
        )
        if isinstance(amount_field, Invalid):
            return amount_field
        amount = (
            parse_amount(get("amount"), currency)
            if amount_field == "amount"
            else parse_amount_minor(get("amount_minor"))
        )
        if isinstance(amount, Invalid):
            return amount
        time_field = (
            "event_time"
            if get("event_time_ms") is None
            else _one_of(fields, "event_time", "event_time_ms")
        )
        if isinstance(time_field, Invalid):
            return time_field
        if time_field == "event_time":
            stamp = self.times.field(get("event_time"))
        else:
            ms = parse_event_time_ms(get("event_time_ms"))
            stamp = ms if isinstance(ms, Invalid) else (ms, None)
        if isinstance(stamp, Invalid):
            return stamp
        offset = get("utc_offset_minutes")
        if offset is not None:
            offset = parse_offset(offset)
            if isinstance(offset, Invalid):
                return offset
        latitude = get("latitude")
        if latitude is not None:
            latitude = parse_coordinate("latitude", latitude)
            if isinstance(latitude, Invalid):
                return latitude
        longitude = get("longitude")
        if longitude is not None:
            longitude = parse_coordinate("longitude", longitude)
            if isinstance(longitude, Invalid):
                return longitude
        device = get("device_id")
        device = "" if device is None else parse_device(device)
        if isinstance(device, Invalid):
            return device
        event_ms, time_offset = stamp
        try:
            tx = Transaction(
                transaction_id=tid,
                customer_id=cid,
                terminal_id=term,
                amount_minor=amount,
                currency=currency,
                event_time_ms=event_ms,
                utc_offset_minutes=offset if offset is not None else (time_offset or 0),
                latitude=latitude,
                longitude=longitude,
                device_id=device,
            )
        except UnicodeEncodeError:  # protobuf strings are UTF-8
            texts = {"transaction_id": tid, "customer_id": cid, "terminal_id": term}
            return not_utf8({**texts, "device_id": device})
        rejected = validate_transaction(tx, now_ms, self.max_future_ms)
        if rejected is not None:
            field = field_of(rejected, tx, amount_field, time_field)
            return Invalid(field, rejected.reason, rejected.detail)
        return tx
