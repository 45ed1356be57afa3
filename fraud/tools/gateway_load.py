"""Random request bodies for load-testing ``fraud gateway`` (``benchmarks/locustfile.py``).

Kept apart from the locustfile so tests can check, without importing locust (which
monkey-patches the standard library through gevent), that every generated document is one the
gateway accepts. Documents vary over the accepted forms: ``amount`` as a decimal string or a
JSON number, or ``amount_minor``; ``event_time`` as ISO 8601 with an offset, the replay layout
``YYYY-MM-DD HH:MM:SS`` or epoch milliseconds, or ``event_time_ms``; with or without a location
and a device id.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from fraud.contracts.currency import exponent
from fraud.contracts.units import HOUR_MS

__all__ = ["CURRENCIES", "random_batch", "random_document"]

CURRENCIES: tuple[str, ...] = ("EUR", "USD", "JPY", "BHD")
_OFFSETS = (-300, 0, 60, 120, 540)


def random_document(
    rng: random.Random, now_ms: int, *, n_customers: int = 10_000, n_terminals: int = 2_000
) -> dict[str, Any]:
    """One valid transaction document with an event time in the 24 hours before ``now_ms``."""
    customer = rng.randrange(n_customers)
    currency = CURRENCIES[customer % len(CURRENCIES)]  # a card has one currency
    minor = int(rng.lognormvariate(3.5, 1.2) * 10 ** exponent(currency))
    event_ms = now_ms - rng.randrange(24 * HOUR_MS)
    offset = rng.choice(_OFFSETS)
    doc: dict[str, Any] = {
        "transaction_id": f"lt-{rng.getrandbits(64):016x}",
        "customer_id": f"cust-{customer:05d}",
        "terminal_id": f"term-{rng.randrange(n_terminals):05d}",
        "currency": currency,
    }
    form = rng.random()
    major = Decimal(minor).scaleb(-exponent(currency))
    if form < 0.4:
        doc["amount"] = str(major)
    elif form < 0.7:
        doc["amount"] = float(major)  # read through its shortest repr: exact
    else:
        doc["amount_minor"] = minor
    form = rng.random()
    stamp = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=event_ms)
    if form < 0.4:
        local = stamp.astimezone(timezone(timedelta(minutes=offset)))
        doc["event_time"] = local.isoformat(timespec="milliseconds")
    elif form < 0.6:
        doc["event_time"] = stamp.strftime("%Y-%m-%d %H:%M:%S")
        doc["utc_offset_minutes"] = offset
    elif form < 0.8:
        doc["event_time"] = event_ms
    else:
        doc["event_time_ms"] = event_ms
        doc["utc_offset_minutes"] = offset
    if rng.random() < 0.3:
        doc["latitude"] = round(rng.uniform(-90.0, 90.0), 6)
        doc["longitude"] = round(rng.uniform(-180.0, 180.0), 6)
    if rng.random() < 0.5:
        doc["device_id"] = f"dev-{rng.getrandbits(32):08x}"
    return doc


def random_batch(rng: random.Random, now_ms: int, size: int) -> list[dict[str, Any]]:
    """``size`` documents for one bulk request."""
    return [random_document(rng, now_ms) for _ in range(size)]
