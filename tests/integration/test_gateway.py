"""``fraud gateway`` through the session broker: HTTP in, ``fraud.v1.Transaction`` read back.

The gateway runs in-process on a free port (or as ``fraud gateway`` for the signal test), and a
confluent consumer reads the topic back. "Nothing was produced" is checked after the gateway
stopped (which flushes its producer), by reading every partition up to its high watermark.
The parsing itself is tested as pure functions in ``tests/unit/ingest/test_gateway.py``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator

import aiohttp
import pytest

from fraud.broker import free_port
from fraud.contracts.units import DAY_MS
from fraud.contracts.wire import parse_transaction
from fraud.ingest.gateway import (
    parse_document,
)
from fraud.settings import Settings
from fraud.tools.gateway_load import random_batch
from fraud.tools.tail import open_consumer
from fraud.v1.transaction_pb2 import Transaction
from tests.unit.ingest.test_gateway import (
    EXPECTED,
    body_of,
    gateway,
    now_doc,
    post,
    run,
)

# ---------------------------------------------------------------- through HTTP and Kafka


def read_topic(settings: Settings) -> list[tuple[bytes | None, int, Transaction]]:
    """Every record of the transactions topic as (key, partition, transaction), up to the end."""
    from confluent_kafka import TopicPartition

    topic = settings.topic_names.transactions
    consumer = open_consumer(settings, topic, from_beginning=True)
    try:
        want = 0
        for tp in consumer.assignment():
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition), 10)
            want += high - low
        records: list[tuple[bytes | None, int, Transaction]] = []
        deadline = time.monotonic() + 30
        while len(records) < want:
            assert time.monotonic() < deadline, f"read {len(records)} of {want} records"
            msg = consumer.poll(0.5)
            if msg is None or msg.error() is not None:
                continue
            tx = parse_transaction(msg.value(), time.time_ns() // 1_000_000, 2 * DAY_MS)
            assert isinstance(tx, Transaction), tx  # the worker would take it
            records.append((msg.key(), msg.partition(), tx))
        return records
    finally:
        consumer.close()


@pytest.mark.timeout(120)
def test_a_transaction_arrives_keyed_by_customer_equal_to_what_was_sent(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    event_ms = time.time_ns() // 1_000_000 - 3_600_000
    doc = now_doc(event_time=event_ms, utc_offset_minutes=120, device_id=" dev-9 ")
    expected = Transaction()
    expected.CopyFrom(EXPECTED)
    expected.event_time_ms = event_ms
    latencies: list[float] = []

    async def main() -> None:
        async with gateway(settings) as gw, aiohttp.ClientSession() as session:
            async with session.get(f"{gw.url}/healthz") as resp:
                assert resp.status == 200 and await resp.json() == {"status": "ok"}
            status, answer = await post(session, gw, body_of(doc))
            assert (status, answer) == (202, {"accepted": 1, "ids": ["tx-1"]})
            # sequential single requests on one connection: latency of one request
            for i in range(100):
                start = time.perf_counter()
                status, _ = await post(session, gw, body_of(now_doc(transaction_id=f"l-{i}")))
                latencies.append((time.perf_counter() - start) * 1000)
                assert status == 202

    run(main())
    records = read_topic(settings)
    assert len(records) == 101
    key, _, tx = next(r for r in records if r[2].transaction_id == "tx-1")
    assert key == b"cust-42"
    assert tx == expected
    assert all(key == b"cust-42" for key, _, _ in records)
    assert len({partition for _, partition, _ in records}) == 1  # one customer, one partition
    latencies.sort()
    p50, p99 = latencies[49], latencies[98]
    with capsys.disabled():
        print(f"\ngateway single-request latency (202 after the broker's ack): "
              f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {latencies[-1]:.1f} ms")  # fmt: skip
    # A loose bound, far above the few ms measured: it catches a blocked loop or a slow poll.
    assert p50 < 100


@pytest.mark.timeout(120)
def test_a_bulk_of_generated_documents_arrives_complete_in_customer_order(
    settings: Settings,
) -> None:
    n = 1000
    docs = random_batch(random.Random(7), time.time_ns() // 1_000_000, n)
    for i, doc in enumerate(docs):  # few customers, so each has many records to keep in order
        doc["customer_id"] = f"cust-{i % 13}"
        doc["transaction_id"] = f"bulk-{i:04d}"

    async def main() -> None:
        async with gateway(settings) as gw, aiohttp.ClientSession() as session:
            status, answer = await post(session, gw, body_of(docs[:600]))
            assert status == 202, answer
            assert answer == {"accepted": 600, "ids": [d["transaction_id"] for d in docs[:600]]}
            status, answer = await post(session, gw, body_of(docs[600:]))
            assert (status, answer["accepted"]) == (202, 400), answer

    run(main())
    records = read_topic(settings)
    assert len(records) == n
    now = time.time_ns() // 1_000_000
    sent = {}
    for doc in docs:
        tx = parse_document(doc, now_ms=now, max_future_ms=2 * DAY_MS)
        assert isinstance(tx, Transaction)
        sent[tx.transaction_id] = tx
    assert {tx.transaction_id: tx for _, _, tx in records} == sent
    partition_of: dict[bytes | None, set[int]] = {}
    order: dict[bytes | None, list[str]] = {}
    for key, partition, tx in sorted(records, key=lambda r: r[2].transaction_id):
        assert key == tx.customer_id.encode()
        partition_of.setdefault(key, set()).add(partition)
    assert all(len(parts) == 1 for parts in partition_of.values())
    for key, _, tx in records:  # records of one partition come back in offset order
        order.setdefault(key, []).append(tx.transaction_id)
    assert all(ids == sorted(ids) for ids in order.values())


@pytest.mark.timeout(120)
def test_invalid_and_oversized_requests_are_refused_and_produce_nothing(
    settings: Settings,
) -> None:
    limit = 64 * 1024
    good = [now_doc(transaction_id=f"ok-{i}") for i in range(3)]
    refused: list[tuple[bytes, int, str, str | None, int | None]] = [
        (b"{not json", 400, "invalid_json", None, None),
        (body_of(now_doc(customer_id=...)), 400, "missing_customer_id", "customer_id", None),
        (body_of(now_doc(amount="-3.50")), 400, "invalid_amount", "amount", None),
        (body_of(now_doc(amount=True)), 400, "wrong_type", "amount", None),
        (body_of(now_doc(customer_id={"id": 1})), 400, "wrong_type", "customer_id", None),
        (body_of(now_doc(event_time="soon")), 400, "invalid_event_time", "event_time", None),
        # a bulk with one bad item in the middle: nothing of it is produced
        (body_of([*good, now_doc(currency="ZZZ"), *good]), 400, "unknown_currency", "currency", 3),
        (body_of([now_doc(transaction_id=f"big-{i}") for i in range(1000)]), 413, "too_large",
         None, None),
    ]  # fmt: skip
    assert len(refused[-1][0]) > limit

    async def chunked(body: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(body), 8192):
            yield body[start : start + 8192]

    async def main() -> None:
        async with (
            gateway(settings, max_body_bytes=limit) as gw,
            aiohttp.ClientSession() as session,
        ):
            for body, status, reason, field, item in refused:
                got_status, answer = await post(session, gw, body)
                assert (got_status, answer["error"]) == (status, reason), answer
                assert answer.get("field") == field and answer.get("item") == item, answer
                if field is not None:
                    assert field in answer["detail"]
            # without a Content-Length (chunked), the limit holds while reading
            async with session.post(
                f"{gw.url}/v1/transactions", data=chunked(refused[-1][0])
            ) as resp:
                assert resp.status == 413 and (await resp.json())["error"] == "too_large"
            # and the gateway still takes good requests afterwards
            status, answer = await post(session, gw, body_of(now_doc(transaction_id="marker")))
            assert status == 202, answer

    run(main())
    assert [tx.transaction_id for _, _, tx in read_topic(settings)] == ["marker"]


@pytest.mark.timeout(60)
def test_a_full_producer_queue_is_503_and_produces_nothing(settings: Settings) -> None:
    async def main() -> None:
        async with gateway(settings, max_queue=5) as gw, aiohttp.ClientSession() as session:
            docs = [now_doc(transaction_id=f"q-{i}") for i in range(6)]
            async with session.post(f"{gw.url}/v1/transactions", data=body_of(docs)) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == "1"
                answer = await resp.json()
                assert answer["error"] == "unavailable" and "queue" in answer["detail"]
            status, answer = await post(session, gw, body_of(docs[:5]))
            assert status == 202, answer

    run(main())
    assert len(read_topic(settings)) == 5


@pytest.mark.timeout(120)
def test_cli_gateway_serves_and_stops_on_sigterm_flushing(settings: Settings) -> None:
    port = free_port()
    cmd = [
        sys.executable, "-m", "fraud", "gateway", "--port", str(port),
        "--brokers", settings.brokers, "--topic-prefix", settings.topic_prefix,
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:  # until it listens
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the gateway did not start"
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.05)
        request = urllib.request.Request(
            f"{url}/v1/transactions",
            data=body_of([now_doc(transaction_id=f"cli-{i}") for i in range(20)]),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=30) as resp:
            assert resp.status == 202
            assert json.loads(resp.read())["accepted"] == 20
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert f"listening on {url}" in err and "producer flushed" in err, err
    assert len(read_topic(settings)) == 20
