"""The gateway under abuse, without Kafka (a fake writer): text that has no UTF-8 form, clients
that hold connections open by sending slowly or not at all, and retries that must not be
produced twice.

The slow clients are real sockets against the real aiohttp server with small timeouts; they
assert that the server closes the connection, with a generous bound only against a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest

from fraud.ingest.gateway import (
    IDEMPOTENCY_HEADER,
    REPLAYED_HEADER,
    DeliveryError,
    GatewayConfig,
    listen,
    make_app,
    url_of,
)
from fraud.ingest.idempotency import PENDING, Remembered, digest
from fraud.settings import Settings
from fraud.v1.transaction_pb2 import Transaction
from tests.unit.ingest.test_gateway import NOW_MS, VALID, body_of, parse, with_

HANG_GUARD_S = 30.0  # far above any timeout here: only a server that never closes reaches it


@dataclass
class FakeWriter:
    """Keeps what it is given; ``gate`` holds a send until set, ``fail`` makes sends fail."""

    sent: list[Transaction] = field(default_factory=list)
    gate: asyncio.Event | None = None
    fail: Exception | None = None
    entered: asyncio.Event = field(default_factory=asyncio.Event)

    async def send(self, txs: Any) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.sent.extend(txs)


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Server:
    url: str
    host: str
    port: int
    writer: FakeWriter
    monotonic: FakeMonotonic


@contextlib.asynccontextmanager
async def serving(**options: Any) -> AsyncIterator[Server]:
    config = GatewayConfig(port=0, create_topics=False, **options)
    writer, monotonic = FakeWriter(), FakeMonotonic()
    app = make_app(Settings(), config, writer, clock=lambda: NOW_MS, monotonic=monotonic)
    runner = await listen(app, config)
    try:
        host, port = runner.addresses[0][:2]
        yield Server(url_of(runner), host, port, writer, monotonic)
    finally:
        await runner.cleanup()


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), HANG_GUARD_S * 2))  # type: ignore[arg-type]


async def post(
    session: aiohttp.ClientSession, server: Server, body: bytes, key: str | None = None
) -> tuple[int, dict[str, Any], bool]:
    headers = {} if key is None else {IDEMPOTENCY_HEADER: key}
    async with session.post(f"{server.url}/v1/transactions", data=body, headers=headers) as resp:
        return resp.status, await resp.json(), resp.headers.get(REPLAYED_HEADER) == "true"


# ---------------------------------------------------------------- text without a UTF-8 form


@pytest.mark.parametrize("name", ["transaction_id", "customer_id", "terminal_id", "device_id"])
def test_a_lone_surrogate_is_a_field_error(name: str) -> None:
    got = parse(with_(**{name: "ok\ud800"}))
    assert not isinstance(got, Transaction)
    assert (got.reason, got.field) == (f"invalid_{name}", name)
    assert "surrogate" in got.detail and "\n" not in got.detail


def test_a_lone_surrogate_in_the_json_is_a_400_not_a_500() -> None:
    raw = json.dumps(VALID).replace('"tx-1"', '"\\ud800"').encode()  # JSON escapes stay ASCII

    async def main() -> None:
        async with serving() as server, aiohttp.ClientSession() as session:
            status, answer, _ = await post(session, server, raw)
            assert status == 400, answer
            assert (answer["error"], answer["field"]) == (
                "invalid_transaction_id",
                "transaction_id",
            )
            assert server.writer.sent == []

    run(main)


# ---------------------------------------------------------------- slow and idle connections


async def closed_by_server(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    with contextlib.suppress(ConnectionError):
        while chunk := await reader.read(65536):
            received += chunk
    return received


async def dribble(writer: asyncio.StreamWriter, data: bytes, until: asyncio.Task[bytes]) -> int:
    """Send ``data`` a byte at a time, slowly, until ``until`` is done; the bytes sent."""
    sent = 0
    with contextlib.suppress(ConnectionError):
        for byte in data:
            if until.done():
                break
            writer.write(bytes([byte]))
            await writer.drain()
            sent += 1
            await asyncio.wait([until], timeout=0.05)  # the client's slowness
    return sent


HEAD = b"POST /v1/transactions HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"


def test_a_client_dribbling_its_headers_is_disconnected() -> None:
    async def main() -> None:
        async with serving(header_timeout_s=0.3) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            closed = asyncio.create_task(closed_by_server(reader))
            endless = HEAD + b"X-Padding: " + b"a" * 100_000  # never ends its headers
            sent = await dribble(writer, endless, closed)
            await asyncio.wait_for(closed, HANG_GUARD_S)
            assert sent < len(endless)  # closed while it was still sending
            writer.close()
            # the server is fine: a normal request on a new connection is answered
            async with aiohttp.ClientSession() as session:
                status, _, _ = await post(session, server, body_of(VALID))
            assert status == 202

    run(main)


def test_a_client_that_sends_nothing_is_disconnected() -> None:
    async def main() -> None:
        async with serving(header_timeout_s=0.3) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            assert await asyncio.wait_for(closed_by_server(reader), HANG_GUARD_S) == b""
            writer.close()

    run(main)


def test_a_client_dribbling_its_body_gets_408_and_is_disconnected() -> None:
    async def main() -> None:
        body = body_of(VALID)
        async with serving(body_timeout_s=0.3) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            closed = asyncio.create_task(closed_by_server(reader))
            writer.write(HEAD + f"Content-Length: {len(body)}\r\n\r\n".encode())
            sent = await dribble(writer, body * 1000, closed)  # more than it announced
            received = await asyncio.wait_for(closed, HANG_GUARD_S)
            assert sent < len(body)  # it never finished the body
            assert received.startswith(b"HTTP/1.1 408 "), received[:100]
            assert b'"body_timeout"' in received
            assert server.writer.sent == []
            writer.close()

    run(main)


def test_an_idle_keep_alive_connection_is_closed() -> None:
    async def main() -> None:
        body = body_of(VALID)
        async with serving(header_timeout_s=0.3) as server:
            reader, writer = await asyncio.open_connection(server.host, server.port)
            writer.write(HEAD + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status_line = await asyncio.wait_for(reader.readline(), HANG_GUARD_S)
            assert status_line.startswith(b"HTTP/1.1 202 "), status_line
            # kept alive after the answer, then closed for idling
            await asyncio.wait_for(closed_by_server(reader), HANG_GUARD_S)
            assert len(server.writer.sent) == 1
            writer.close()

    run(main)


def test_the_timeouts_are_checked() -> None:
    for name in ("header_timeout_s", "body_timeout_s", "idempotency_ttl_s"):
        with pytest.raises(ValueError, match=name):
            GatewayConfig(**{name: 0})


# ---------------------------------------------------------------- idempotency


def test_a_retry_under_the_same_key_gets_the_first_answer_and_is_not_produced() -> None:
    async def main() -> None:
        async with serving() as server, aiohttp.ClientSession() as session:
            body = body_of([with_(transaction_id="a"), with_(transaction_id="b")])
            first = await post(session, server, body, key="k-1")
            again = await post(session, server, body, key="k-1")
            assert first == (202, {"accepted": 2, "ids": ["a", "b"]}, False)
            assert again == (202, first[1], True)
            assert [tx.transaction_id for tx in server.writer.sent] == ["a", "b"]
            other = await post(session, server, body_of(with_(transaction_id="c")), key="k-1")
            assert (other[0], other[1]["error"]) == (422, "idempotency_key_reused")
            assert len(server.writer.sent) == 2
            bad = await post(session, server, body, key="k" * 256)
            assert (bad[0], bad[1]["error"]) == (400, "invalid_idempotency_key")

    run(main)


def test_without_a_key_a_transaction_id_is_produced_once() -> None:
    async def main() -> None:
        async with serving() as server, aiohttp.ClientSession() as session:
            one = body_of(with_(transaction_id="a"))
            assert (await post(session, server, one))[:2] == (202, {"accepted": 1, "ids": ["a"]})
            assert await post(session, server, one) == (202, {"accepted": 1, "ids": ["a"]}, True)
            # a bulk with one new transaction produces only that one
            bulk = body_of([with_(transaction_id="a"), with_(transaction_id="b")])
            assert (await post(session, server, bulk))[:2] == (
                202,
                {"accepted": 2, "ids": ["a", "b"]},
            )
            assert [tx.transaction_id for tx in server.writer.sent] == ["a", "b"]
            # the same id with other content is a conflict, named like a field error
            changed = body_of([with_(transaction_id="c"), with_(transaction_id="a", amount="1.00")])
            status, answer, _ = await post(session, server, changed)
            assert status == 409 and answer["error"] == "transaction_id_reused"
            assert (answer["field"], answer["item"]) == ("transaction_id", 1)
            twice = body_of([with_(transaction_id="d"), with_(transaction_id="d", amount="2.00")])
            assert (await post(session, server, twice))[0] == 409
            assert [tx.transaction_id for tx in server.writer.sent] == ["a", "b"]
            # after the window, the id is forgotten: produced again
            server.monotonic.now += GatewayConfig().idempotency_ttl_s
            assert (await post(session, server, one))[:2] == (202, {"accepted": 1, "ids": ["a"]})
            assert [tx.transaction_id for tx in server.writer.sent] == ["a", "b", "a"]

    run(main)


def test_a_retry_while_the_first_is_in_flight_is_409_and_a_failed_one_is_forgotten() -> None:
    async def main() -> None:
        async with serving() as server, aiohttp.ClientSession() as session:
            server.writer.gate = asyncio.Event()
            body = body_of(with_(transaction_id="a"))
            first = asyncio.create_task(post(session, server, body, key="k"))
            await server.writer.entered.wait()
            status, answer, _ = await post(session, server, body, key="k")
            assert (status, answer["error"]) == (409, "request_in_progress")
            status, answer, _ = await post(session, server, body)  # same id, no key
            assert (status, answer["error"]) == (409, "request_in_progress")
            server.writer.fail = DeliveryError("broker down")
            server.writer.gate.set()
            assert (await first)[0] == 503
            server.writer.fail = None
            assert (await post(session, server, body, key="k"))[:2] == (
                202,
                {"accepted": 1, "ids": ["a"]},
            )
            assert [tx.transaction_id for tx in server.writer.sent] == ["a"]

    run(main)


def test_remembered_is_bounded_in_time_and_size() -> None:
    clock = FakeMonotonic()
    memory: Remembered[int] = Remembered(10.0, 3, clock)
    for i in range(5):
        memory.store(f"k{i}", digest(b"%d" % i), i)
        clock.now += 1
    assert len(memory) == 3 and memory.get("k0") is None and memory.get("k1") is None
    assert memory.get("k4") == (digest(b"4"), 4)
    memory.hold("k5", digest(b"5"))
    assert memory.get("k5") == (digest(b"5"), PENDING)
    memory.forget("k5")
    assert memory.get("k5") is None
    clock.now += 8.5  # k2 was stored 11 s ago, k4 9 s ago
    assert memory.get("k2") is None and memory.get("k4") is not None
    with pytest.raises(ValueError):
        Remembered(0.0, 1, clock)
