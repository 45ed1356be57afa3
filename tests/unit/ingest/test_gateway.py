"""``fraud gateway``: JSON in over HTTP, ``fraud.v1.Transaction`` out on the transactions topic.

The parsing is tested as pure functions; the HTTP and Kafka tests run the gateway in-process on a
free port against the session broker and read the topic back with a confluent consumer. "Nothing
was produced" is checked after the gateway stopped (which flushes its producer), by reading every
partition up to its high watermark: whatever a buggy gateway had produced would be there.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
import pytest

from fraud.broker import free_port
from fraud.contracts.units import DAY_MS
from fraud.ingest.gateway import (
    FIELDS,
    Gateway,
    GatewayConfig,
    Invalid,
    parse_body,
    parse_document,
    start_gateway,
    to_document,
)
from fraud.settings import Settings
from fraud.tools.gateway_load import random_batch
from fraud.v1.transaction_pb2 import Transaction

NOW_MS = 1_764_000_000_000  # 2025-11-24T16:00:00Z

VALID: dict[str, Any] = {
    "transaction_id": "tx-1",
    "customer_id": "cust-42",
    "terminal_id": "term-7",
    "amount": "57.16",
    "currency": "EUR",
    "event_time": "2025-11-24T17:00:00.250+02:00",
    "latitude": 48.85,
    "longitude": 2.35,
    "device_id": "dev-9",
}
EXPECTED = Transaction(
    transaction_id="tx-1",
    customer_id="cust-42",
    terminal_id="term-7",
    amount_minor=5716,
    currency="EUR",
    event_time_ms=NOW_MS - 3_600_000 + 250,
    utc_offset_minutes=120,
    latitude=48.85,
    longitude=2.35,
    device_id="dev-9",
)


def parse(doc: object) -> Transaction | Invalid:
    return parse_document(doc, now_ms=NOW_MS, max_future_ms=2 * DAY_MS)


def body_of(value: object) -> bytes:
    return json.dumps(value).encode()


def with_(**changes: Any) -> dict[str, Any]:
    """VALID with fields replaced; a value of ``...`` removes the field."""
    doc = {**VALID, **changes}
    return {k: v for k, v in doc.items() if v is not ...}


# ---------------------------------------------------------------- pure: accepted forms


def test_the_documented_example_becomes_the_expected_transaction() -> None:
    assert parse(VALID) == EXPECTED


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        ({"amount": 57.16}, "amount_minor", 5716),  # a JSON number, read exactly
        ({"amount": 12}, "amount_minor", 1200),
        ({"amount": ..., "amount_minor": 5716}, "amount_minor", 5716),
        ({"amount": ..., "amount_minor": "5716"}, "amount_minor", 5716),  # protobuf JSON int64
        ({"currency": "jpy", "amount": "5000"}, "amount_minor", 5000),
        ({"currency": "BHD", "amount": "1.234"}, "amount_minor", 1234),
        ({"currency": ...}, "currency", "EUR"),  # the default, as in replay
        ({"event_time": "2025-11-24 15:00:00"}, "event_time_ms", NOW_MS - 3_600_000),
        ({"event_time": "2025-11-24 15:00:00"}, "utc_offset_minutes", 0),
        ({"event_time": NOW_MS}, "event_time_ms", NOW_MS),  # epoch ms by magnitude
        ({"event_time": NOW_MS // 1000}, "event_time_ms", NOW_MS),  # epoch seconds
        ({"event_time": ..., "event_time_ms": NOW_MS}, "event_time_ms", NOW_MS),
        ({"utc_offset_minutes": -300}, "utc_offset_minutes", -300),  # beats the ISO offset
        ({"customer_id": 42}, "customer_id", "42"),  # integer ids, as in JSONL replay
        ({"device_id": None}, "device_id", ""),
    ],
)
def test_accepted_forms(changes: dict[str, Any], field: str, value: object) -> None:
    tx = parse(with_(**changes))
    assert isinstance(tx, Transaction), tx
    assert getattr(tx, field) == value


def test_location_is_optional() -> None:
    tx = parse(with_(latitude=..., longitude=...))
    assert isinstance(tx, Transaction)
    assert not tx.HasField("latitude") and not tx.HasField("longitude")


def test_to_document_round_trips_and_protobuf_json_is_accepted() -> None:
    assert parse(to_document(EXPECTED)) == EXPECTED
    assert set(to_document(EXPECTED)) <= FIELDS
    from fraud.contracts.wire import to_json

    assert parse(json.loads(to_json(EXPECTED))) == EXPECTED  # int64 as strings


# ---------------------------------------------------------------- pure: refused input


@pytest.mark.parametrize(
    ("doc", "reason", "field"),
    [
        (with_(customer_id=...), "missing_customer_id", "customer_id"),
        (with_(transaction_id="  "), "missing_transaction_id", "transaction_id"),
        (with_(terminal_id="t" * 257), "invalid_terminal_id", "terminal_id"),
        (with_(amount=...), "missing_amount", "amount"),
        (with_(amount="-1.00"), "invalid_amount", "amount"),
        (with_(amount=..., amount_minor=-5), "invalid_amount", "amount_minor"),
        (with_(amount="1.234"), "invalid_amount", "amount"),  # more decimals than EUR has
        (with_(amount="abc"), "invalid_amount", "amount"),
        (with_(amount_minor=5716), "conflicting_fields", "amount"),
        (with_(event_time=...), "missing_event_time", "event_time"),
        (with_(event_time="yesterday"), "invalid_event_time", "event_time"),
        (with_(event_time="1969-12-31 23:59:59"), "invalid_event_time", "event_time"),
        (with_(event_time=NOW_MS + 3 * DAY_MS), "invalid_event_time", "event_time"),
        (with_(event_time_ms=NOW_MS), "conflicting_fields", "event_time"),
        (with_(currency="XYZ"), "unknown_currency", "currency"),
        (with_(utc_offset_minutes=900), "invalid_utc_offset", "utc_offset_minutes"),
        (with_(latitude=91.0), "invalid_location", "latitude"),
        (with_(longitude=...), "invalid_location", "longitude"),
        (with_(amout="1.00"), "unknown_field", "amout"),
        # wrong types
        (with_(customer_id=["c1"]), "wrong_type", "customer_id"),
        (with_(customer_id=True), "wrong_type", "customer_id"),
        (with_(amount=True), "wrong_type", "amount"),
        (with_(amount={"value": 1}), "wrong_type", "amount"),
        (with_(amount=..., amount_minor=57.16), "wrong_type", "amount_minor"),
        (with_(amount=..., amount_minor="57.16"), "wrong_type", "amount_minor"),
        (with_(currency=978), "wrong_type", "currency"),
        (with_(event_time=[2025, 11, 24]), "wrong_type", "event_time"),
        (with_(event_time=False), "wrong_type", "event_time"),
        (with_(latitude="north"), "wrong_type", "latitude"),
        (with_(utc_offset_minutes="+2h"), "wrong_type", "utc_offset_minutes"),
        (with_(device_id=1.5), "wrong_type", "device_id"),
    ],
)
def test_refused_documents_name_the_field(doc: object, reason: str, field: str) -> None:
    got = parse(doc)
    assert isinstance(got, Invalid), got
    assert (got.reason, got.field) == (reason, field), got
    assert field in got.detail


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "invalid_json"),
        (b"{bad", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[" * 100_000, "invalid_json"),  # too deep for the decoder
        (b"[]", "empty_batch"),
        (b'"a string"', "not_an_object"),
        (b"42", "not_an_object"),
    ],
)
def test_refused_bodies(body: bytes, reason: str) -> None:
    got = parse_body(body, now_ms=NOW_MS, max_future_ms=2 * DAY_MS)
    assert isinstance(got, Invalid) and got.reason == reason, got
    assert got.item is None


def test_a_bad_item_refuses_the_whole_batch_and_names_it() -> None:
    items = [with_(transaction_id=f"tx-{i}") for i in range(5)]
    items[3] = with_(transaction_id="tx-3", amount="-2")
    got = parse_body(body_of(items), now_ms=NOW_MS, max_future_ms=2 * DAY_MS)
    assert isinstance(got, Invalid)
    assert got.to_json() == {
        "error": "invalid_amount",
        "detail": "item 3: field 'amount': amount '-2' is negative",
        "field": "amount",
        "item": 3,
    }
    items[1] = 7
    got = parse_body(body_of(items), now_ms=NOW_MS, max_future_ms=2 * DAY_MS)
    assert isinstance(got, Invalid) and (got.reason, got.item) == ("not_an_object", 1)


def test_batch_keeps_request_order() -> None:
    items = [with_(transaction_id=f"tx-{i}") for i in range(5)]
    got = parse_body(body_of(items), now_ms=NOW_MS, max_future_ms=2 * DAY_MS)
    assert not isinstance(got, Invalid)
    assert [tx.transaction_id for tx in got] == [f"tx-{i}" for i in range(5)]
    single = parse_body(body_of(VALID), now_ms=NOW_MS, max_future_ms=2 * DAY_MS)
    assert single == [EXPECTED]


@pytest.mark.parametrize("seed", range(5))
def test_load_generator_documents_are_all_accepted(seed: int) -> None:
    rng = random.Random(seed)
    docs = random_batch(rng, NOW_MS, 400)
    got = parse_body(body_of(docs), now_ms=NOW_MS, max_future_ms=2 * DAY_MS)
    assert not isinstance(got, Invalid), got
    assert len({tx.transaction_id for tx in got}) == 400
    # every form shows up, so the load test exercises them all
    keys = [frozenset(doc) for doc in docs]
    for name in ("amount", "amount_minor", "event_time", "event_time_ms", "latitude"):
        assert any(name in k for k in keys), name
    assert any(isinstance(d.get("amount"), float) for d in docs)
    assert any(isinstance(d.get("event_time"), int) for d in docs)


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="currency"):
        GatewayConfig(default_currency="XYZ")
    with pytest.raises(ValueError, match="max_body_bytes"):
        GatewayConfig(max_body_bytes=0)


# ---------------------------------------------------------------- through HTTP and Kafka


@contextlib.asynccontextmanager
async def gateway(settings: Settings, **options: Any) -> AsyncIterator[Gateway]:
    gw = await start_gateway(settings, GatewayConfig(port=free_port(), **options))
    try:
        yield gw
    finally:
        assert await gw.stop() == 0, "records left undelivered at shutdown"


async def post(
    session: aiohttp.ClientSession, gw: Gateway, body: bytes, **kwargs: Any
) -> tuple[int, dict[str, Any]]:
    async with session.post(f"{gw.url}/v1/transactions", data=body, **kwargs) as resp:
        return resp.status, await resp.json()


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def now_doc(**changes: Any) -> dict[str, Any]:
    """VALID at the current time (the gateway's clock is the wall clock)."""
    return with_(**{"event_time": time.time_ns() // 1_000_000 - 60_000, **changes})


@pytest.mark.timeout(60)
def test_an_unreachable_broker_is_503_after_the_delivery_timeout() -> None:
    dead = Settings(brokers=f"127.0.0.1:{free_port()}", topic_prefix="t-dead-")

    async def main() -> None:
        config = GatewayConfig(
            port=free_port(), delivery_timeout_s=1.0, shutdown_timeout_s=0.5, create_topics=False
        )
        gw = await start_gateway(dead, config)
        try:
            async with aiohttp.ClientSession() as session:
                start = time.monotonic()
                status, answer = await post(session, gw, body_of(now_doc()))
                waited = time.monotonic() - start
                assert (status, answer["error"]) == (503, "unavailable"), answer
                assert 0.9 < waited < 10, waited
                async with session.get(f"{gw.url}/healthz") as resp:  # alive, though
                    assert resp.status == 200
        finally:
            assert await gw.stop() == 0  # the record already failed: none left to flush

    run(main())


def test_help_explains(capsys: pytest.CaptureFixture[str]) -> None:
    from fraud.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["gateway", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in ("/v1/transactions", "--host", "--port", "KAFKA_BOOTSTRAP", "202", "413", "503"):
        assert text in out
