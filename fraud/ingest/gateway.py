"""``fraud gateway``: an HTTP endpoint that validates JSON transactions and produces them to Kafka.

Endpoints::

    POST /v1/transactions   one JSON transaction object, or a JSON array of them (bulk)
        202 {"accepted": n, "ids": [transaction ids, in request order]}
            once Kafka acknowledged every one of them (acks=all, idempotent producer)
        400 {"error": reason, "detail": text, "field": name, "item": index}
            nothing of the request was produced; "item" (0-based) only for a JSON array,
            "field" when one field is to blame
        408 {"error": "body_timeout", ...}   the body did not arrive within --body-timeout
        409 {"error": "transaction_id_reused" | "request_in_progress", ...}
        422 {"error": "idempotency_key_reused", ...}
            an Idempotency-Key or transaction id remembered from an earlier request
            (fraud.ingest.idempotency: one process, --idempotency-ttl); a retry of an
            accepted request gets its 202 again (Idempotent-Replayed: true), not produced
        413 {"error": "too_large", ...}      body above --max-body-bytes (default 1 MiB)
        503 {"error": "unavailable", ...}    producer queue full, or Kafka did not acknowledge
            in time (broker unreachable); retry the whole request later (Retry-After: 1)
    GET /healthz            200 {"status": "ok"}

Each valid transaction becomes one ``fraud.v1.Transaction`` on the transactions topic, keyed by
its customer id (UTF-8), like ``fraud replay`` writes it.

The JSON shape is the one of a ``fraud replay`` JSONL line (our column names), plus the
protobuf field names for amount and time::

    {
      "transaction_id": "tx-1",                  required, text (or an integer)
      "customer_id": "cust-42",                  required, text (or an integer)
      "terminal_id": "term-7",                   required, text (or an integer)
      "amount": "57.16",                         major units: decimal string or JSON number,
                                                 exact for the currency (no rounding), or
      "amount_minor": 5716,                      integer minor units (integer or digit string);
                                                 exactly one of amount / amount_minor
      "currency": "EUR",                         ISO 4217; absent or null: --currency (EUR)
      "event_time": "2018-04-01T00:00:31+02:00", as in replay files: "YYYY-MM-DD HH:MM:SS"
                                                 (UTC), ISO 8601 with an offset (the offset
                                                 becomes utc_offset_minutes), or an epoch
                                                 integer (below 10**11 seconds, else ms), or
      "event_time_ms": 1522533631000,            epoch milliseconds (integer or digit string);
                                                 exactly one of event_time / event_time_ms
      "utc_offset_minutes": 120,                 optional integer, |offset| <= 840
      "latitude": 48.85, "longitude": 2.35,      optional, together, degrees
      "device_id": "dev-9"                       optional text
    }

Unknown fields are refused (a typo in an optional field would otherwise vanish silently). The
protobuf JSON of a Transaction (``fraud.contracts.wire.to_json``) is accepted as is. Every field
is parsed by ``fraud.ingest.fields``, the parsers ``fraud replay`` uses for file rows, and each
document is then checked by ``fraud.contracts.wire.validate_transaction``, the worker's own
rules, so what the gateway accepts the worker does not dead-letter, and a document is refused
exactly when the same values in a replay file would be.

Layout: the request parsing (:func:`parse_body`, :func:`parse_document`) is pure and takes the
time as an argument; it turns the field parsers' errors into the 400 body (:class:`Invalid`).
:class:`KafkaWriter` moves bytes to Kafka; :func:`start_gateway` wires both into an aiohttp
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from fraud.broker import ensure_topics
from fraud.contracts.currency import EXPONENTS
from fraud.contracts.partitioning import TRANSACTION, type_headers
from fraud.ingest.fields import Invalid as FieldInvalid
from fraud.ingest.fields import TransactionBuilder, wall_ms
from fraud.ingest.idempotency import PENDING, Remembered, digest
from fraud.ingest.options import require_positive
from fraud.kafka_config import make_producer
from fraud.serve import run_until_signalled
from fraud.settings import Settings
from fraud.v1.transaction_pb2 import Transaction

__all__ = [
    "FIELDS",
    "DeliveryError",
    "Gateway",
    "GatewayConfig",
    "Invalid",
    "KafkaWriter",
    "QueueFull",
    "Writer",
    "listen",
    "make_app",
    "parse_body",
    "parse_document",
    "run_gateway",
    "serve_gateway",
    "start_gateway",
    "to_document",
    "url_of",
]

log = logging.getLogger(__name__)

#: Every field a transaction document may have.
FIELDS: frozenset[str] = frozenset(
    {
        "transaction_id",
        "customer_id",
        "terminal_id",
        "amount",
        "amount_minor",
        "currency",
        "event_time",
        "event_time_ms",
        "utc_offset_minutes",
        "latitude",
        "longitude",
        "device_id",
    }
)


# --------------------------------------------------------------------------------------------
# Pure core: request body -> transactions, or why not


@dataclass(frozen=True, slots=True)
class Invalid:
    """Why a request was refused: a reason code, a detail, and where (field, bulk item)."""

    reason: str
    detail: str
    field: str | None = None
    item: int | None = None

    def at(self, item: int) -> Invalid:
        return Invalid(self.reason, f"item {item}: {self.detail}", self.field, item)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.reason, "detail": self.detail}
        if self.field is not None:
            body["field"] = self.field
        if self.item is not None:
            body["item"] = self.item
        return body


def _kind(value: object) -> str:
    """The JSON type name of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _document(doc: object, builder: TransactionBuilder, now_ms: int) -> Transaction | Invalid:
    if not isinstance(doc, dict):
        return Invalid("not_an_object", f"expected a JSON object, got {_kind(doc)}")
    unknown = sorted(str(key) for key in doc if key not in FIELDS)
    if unknown:
        return Invalid(
            "unknown_field",
            f"unknown field {unknown[0]!r}; fields: {', '.join(sorted(FIELDS))}",
            unknown[0],
        )
    tx = builder.build(doc, now_ms)
    if isinstance(tx, FieldInvalid):
        detail = f"field {tx.field!r}: {tx.detail}" if tx.field else tx.detail
        return Invalid(tx.reason, detail, tx.field)
    return tx


def parse_document(
    doc: object, *, now_ms: int, max_future_ms: int, default_currency: str = "EUR"
) -> Transaction | Invalid:
    """One decoded JSON document as a valid Transaction, or why it is refused (see module doc)."""
    builder = TransactionBuilder(max_future_ms=max_future_ms, default_currency=default_currency)
    return _document(doc, builder, now_ms)


def parse_body(
    body: bytes,
    *,
    now_ms: int,
    max_future_ms: int,
    default_currency: str = "EUR",
) -> list[Transaction] | Invalid:
    """A request body as its transactions, in order, or the first reason to refuse it.

    A bulk request is all or nothing: one bad item refuses the whole body, naming the item.
    """
    try:
        decoded = json.loads(body)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError
        message = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
        return Invalid("invalid_json", f"body is not JSON: {message}")
    builder = TransactionBuilder(max_future_ms=max_future_ms, default_currency=default_currency)
    if isinstance(decoded, list):
        if not decoded:
            return Invalid("empty_batch", "the JSON array has no transactions")
        txs: list[Transaction] = []
        for i, doc in enumerate(decoded):
            tx = _document(doc, builder, now_ms)
            if isinstance(tx, Invalid):
                return tx.at(i)
            txs.append(tx)
        return txs
    tx = _document(decoded, builder, now_ms)
    if isinstance(tx, Invalid):
        return tx
    return [tx]


def to_document(tx: Transaction) -> dict[str, Any]:
    """A Transaction as the canonical JSON document the gateway accepts (minor units, ms)."""
    doc: dict[str, Any] = {
        "transaction_id": tx.transaction_id,
        "customer_id": tx.customer_id,
        "terminal_id": tx.terminal_id,
        "amount_minor": tx.amount_minor,
        "currency": tx.currency,
        "event_time_ms": tx.event_time_ms,
        "utc_offset_minutes": tx.utc_offset_minutes,
    }
    if tx.HasField("latitude"):
        doc["latitude"] = tx.latitude
    if tx.HasField("longitude"):
        doc["longitude"] = tx.longitude
    if tx.device_id:
        doc["device_id"] = tx.device_id
    return doc


# --------------------------------------------------------------------------------------------
# Kafka: produce from the event loop, delivery reports through a poll thread


class QueueFull(Exception):
    """The producer's local queue has no room for the request."""


class DeliveryError(Exception):
    """Kafka did not acknowledge a record (broker unreachable, timeout, refused)."""


class _Pending:
    """The delivery reports of one request; settles an asyncio future when all have arrived.

    ``report`` runs on the poll thread (or the thread flushing at shutdown): only one thread at a
    time serves librdkafka's callbacks, so the counter needs no lock.
    """

    def __init__(self, count: int, loop: asyncio.AbstractEventLoop) -> None:
        self.remaining = count
        self.error: KafkaError | None = None
        self.loop = loop
        self.future: asyncio.Future[KafkaError | None] = loop.create_future()

    def report(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None and self.error is None:
            self.error = err
        self.remaining -= 1
        if self.remaining == 0:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        if not self.future.done():
            self.future.set_result(self.error)


_TRANSACTION_HEADERS: list[tuple[str, str | bytes | None]] = [*type_headers(TRANSACTION)]


class KafkaWriter:
    """One confluent-kafka producer; ``send`` awaits the broker's acks without blocking the loop.

    ``produce`` never blocks (librdkafka queues and batches); a daemon thread calls ``poll`` to
    serve the delivery reports, which wake the waiting request through its loop.
    """

    def __init__(self, prod: Producer, topic: str, max_queue: int) -> None:
        self.producer = prod
        self.topic = topic
        self.max_queue = max_queue
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="gateway-kafka-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self.producer.poll(0.1)

    async def send(self, txs: Sequence[Transaction]) -> None:
        """Produce ``txs`` keyed by customer id; return once Kafka acknowledged all of them.

        Raises QueueFull (nothing produced, unless librdkafka's byte limit is hit mid-request)
        and DeliveryError.
        """
        if len(self.producer) + len(txs) > self.max_queue:
            raise QueueFull(f"producer queue holds {len(self.producer):,} records")
        pending = _Pending(len(txs), asyncio.get_running_loop())
        for i, tx in enumerate(txs):
            try:
                self.producer.produce(
                    self.topic,
                    key=tx.customer_id.encode(),
                    value=tx.SerializeToString(),
                    headers=_TRANSACTION_HEADERS,
                    on_delivery=pending.report,
                )
            except BufferError:
                raise QueueFull(f"producer queue full after {i} of {len(txs)} records") from None
            except KafkaException as exc:
                raise DeliveryError(f"produce refused: {exc}") from None
        error = await pending.future
        if error is not None:
            raise DeliveryError(f"Kafka did not acknowledge: {error.str()}")

    def close(self, timeout_s: float) -> int:
        """Stop the poll thread and flush; the number of records still not delivered."""
        self._stopping.set()
        self._thread.join()
        return self.producer.flush(timeout_s)


def open_producer(brokers: str, config: GatewayConfig) -> Producer:
    return make_producer(
        brokers,
        **{
            "enable.idempotence": True,
            "linger.ms": config.linger_ms,
            "queue.buffering.max.messages": config.max_queue,
            # A broker that does not answer within this becomes a 503, not a hung request.
            "message.timeout.ms": int(config.delivery_timeout_s * 1000),
        },
    )


# --------------------------------------------------------------------------------------------
# HTTP


@dataclass(frozen=True)
class GatewayConfig:
    """The gateway's own options (Kafka and topics come from Settings)."""

    host: str = "127.0.0.1"
    port: int = 8080  # 0: any free port (see Gateway.url)
    max_body_bytes: int = 1 << 20
    default_currency: str = "EUR"
    # A connection must deliver a whole request head (request line and headers) within this of
    # opening or of its previous response, else it is closed: a slow client (slow-loris) and an
    # idle keep-alive connection hold a socket no longer than this.
    header_timeout_s: float = 10.0
    # Once the head is in, the body must arrive within this, else 408 and the connection closes.
    body_timeout_s: float = 30.0
    # How long, and for how many, accepted requests (Idempotency-Key) and transaction ids are
    # remembered so that a retry is not produced twice (fraud.ingest.idempotency).
    idempotency_ttl_s: float = 3600.0
    idempotency_max_keys: int = 10_000
    idempotency_max_ids: int = 1_000_000
    # How long Kafka may take to acknowledge a record before the request gets a 503.
    delivery_timeout_s: float = 10.0
    # Records waiting in the producer; a request that does not fit gets a 503.
    max_queue: int = 100_000
    linger_ms: float = 1.0
    # On SIGTERM: how long in-flight requests may take, then how long the final flush may take.
    shutdown_timeout_s: float = 10.0
    create_topics: bool = True

    def __post_init__(self) -> None:
        if self.default_currency not in EXPONENTS:
            raise ValueError(f"unknown default currency {self.default_currency!r}")
        require_positive(
            self,
            "max_body_bytes",
            "delivery_timeout_s",
            "max_queue",
            "header_timeout_s",
            "body_timeout_s",
            "idempotency_ttl_s",
            "idempotency_max_keys",
            "idempotency_max_ids",
        )


class Writer(Protocol):
    """Where accepted transactions go (:class:`KafkaWriter`; a fake in tests)."""

    async def send(self, txs: Sequence[Transaction]) -> None: ...


# The answer of an accepted request: status and JSON body.
Answer = tuple[int, dict[str, Any]]

IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_IDEMPOTENCY_KEY = 255
MAX_LINGER_S = 2.0


@dataclass(frozen=True)
class _State:
    settings: Settings
    config: GatewayConfig
    writer: Writer
    clock: Callable[[], int]
    keys: Remembered[Answer]  # by Idempotency-Key
    ids: Remembered[None]  # by transaction id


_STATE = web.AppKey("gateway", _State)
_PARSE_INLINE_BYTES = 32 * 1024


def _error(status: int, reason: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason, "detail": detail}, status=status, headers=headers)


def _replayed(answer: Answer) -> web.Response:
    status, body = answer
    return web.json_response(body, status=status, headers={REPLAYED_HEADER: "true"})


def _fresh(ids: Remembered[None], txs: Sequence[Transaction]) -> list[Transaction] | Invalid:
    """The transactions of ``txs`` not accepted before (nor earlier in ``txs``), or why the
    request is refused: an id accepted with other content, or one still in flight."""
    fresh: list[Transaction] = []
    seen: dict[str, bytes] = {}
    for i, tx in enumerate(txs):
        tx_id = tx.transaction_id
        tx_digest = digest(tx.SerializeToString())
        before = ids.get(tx_id)
        first = seen.get(tx_id) if before is None else before[0]
        if first is None:
            seen[tx_id] = tx_digest
            fresh.append(tx)
        elif first != tx_digest:
            detail = f"transaction_id {tx_id!r} was accepted with other content"
            return Invalid("transaction_id_reused", detail, "transaction_id", i)
        elif before is not None and before[1] is PENDING:
            detail = f"transaction_id {tx_id!r} is in a request still in progress; retry later"
            return Invalid("request_in_progress", detail, "transaction_id", i)
    return fresh


def _refusal(invalid: Invalid, txs_count: int) -> web.Response:
    body = invalid.to_json()
    if txs_count == 1:
        body.pop("item", None)
    return web.json_response(body, status=409)


async def _post_transactions(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    limit = state.config.max_body_bytes
    too_large = f"body larger than {limit:,} bytes; split the batch"
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is not None and not 0 < len(key) <= MAX_IDEMPOTENCY_KEY:
        detail = f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
        return _error(400, "invalid_idempotency_key", detail)
    if request.content_length is not None and request.content_length > limit:
        return _error(413, "too_large", too_large)
    try:
        body = await asyncio.wait_for(request.read(), state.config.body_timeout_s)
    except web.HTTPRequestEntityTooLarge:  # chunked body beyond client_max_size
        return _error(413, "too_large", too_large)
    except TimeoutError:
        timeout = state.config.body_timeout_s
        response = _error(408, "body_timeout", f"the body did not arrive within {timeout:g} s")
        response.force_close()
        return response
    body_digest = digest(body)
    if key is not None:
        seen = state.keys.get(key)
        if seen is not None:
            first, remembered = seen
            if first != body_digest:
                detail = f"{IDEMPOTENCY_HEADER} {key!r} was used for another body"
                return _error(422, "idempotency_key_reused", detail)
            if isinstance(remembered, tuple):
                return _replayed(remembered)
            detail = f"the request of {IDEMPOTENCY_HEADER} {key!r} is in progress; retry later"
            return _error(409, "request_in_progress", detail)
    parse = functools.partial(
        parse_body,
        body,
        now_ms=state.clock(),
        max_future_ms=state.settings.max_future_ms,
        default_currency=state.config.default_currency,
    )
    # A big bulk parses in a thread, so the loop keeps serving small requests meanwhile.
    parsed = await asyncio.to_thread(parse) if len(body) > _PARSE_INLINE_BYTES else parse()
    if isinstance(parsed, Invalid):
        return web.json_response(parsed.to_json(), status=400)
    txs = parsed
    fresh = _fresh(state.ids, txs)
    if isinstance(fresh, Invalid):
        return _refusal(fresh, len(txs))
    answer: Answer = (202, {"accepted": len(txs), "ids": [tx.transaction_id for tx in txs]})
    if not fresh:  # every one accepted before: a retry
        if key is not None:
            state.keys.store(key, body_digest, answer)
        return _replayed(answer)
    held = [tx.transaction_id for tx in fresh]
    for tx in fresh:
        state.ids.hold(tx.transaction_id, digest(tx.SerializeToString()))
    if key is not None:
        state.keys.hold(key, body_digest)
    try:
        # A safety net over message.timeout.ms, which settles every record on its own.
        await asyncio.wait_for(state.writer.send(fresh), state.config.delivery_timeout_s + 5.0)
    except BaseException as exc:
        # Not accepted (or not known to be): a retry must produce for real.
        for tx_id in held:
            state.ids.forget(tx_id)
        if key is not None:
            state.keys.forget(key)
        if isinstance(exc, QueueFull):
            return _error(503, "unavailable", f"{exc}; retry later", **{"Retry-After": "1"})
        if isinstance(exc, DeliveryError | TimeoutError):
            log.warning("%s", exc or "no delivery report in time")
            detail = str(exc) or "Kafka did not acknowledge in time"
            return _error(503, "unavailable", f"{detail}; retry later", **{"Retry-After": "1"})
        raise
    for tx in fresh:
        state.ids.store(tx.transaction_id, digest(tx.SerializeToString()), None)
    if key is not None:
        state.keys.store(key, body_digest, answer)
    return web.json_response(answer[1], status=answer[0])


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(
    settings: Settings,
    config: GatewayConfig,
    writer: Writer,
    clock: Callable[[], int] = wall_ms,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The gateway's routes; ``clock`` (epoch ms) checks event times, ``monotonic`` (seconds)
    times what is remembered for idempotency."""
    app = web.Application(client_max_size=config.max_body_bytes)
    ttl = config.idempotency_ttl_s
    keys: Remembered[Answer] = Remembered(ttl, config.idempotency_max_keys, monotonic)
    ids: Remembered[None] = Remembered(ttl, config.idempotency_max_ids, monotonic)
    app[_STATE] = _State(settings, config, writer, clock, keys, ids)
    app.router.add_post("/v1/transactions", _post_transactions)
    app.router.add_get("/healthz", _healthz)
    return app


async def listen(app: web.Application, config: GatewayConfig) -> web.AppRunner:
    """Serve ``app`` on ``config.host:port`` with the connection timeouts of ``config``.

    aiohttp's keep-alive timer runs from a connection's start and from each response, and
    closes the connection when no complete request head has arrived by then: it bounds slow
    heads and idle keep-alive connections alike (``header_timeout_s``). The body's own bound
    is in the handler (``body_timeout_s``).
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        shutdown_timeout=config.shutdown_timeout_s,
        keepalive_timeout=config.header_timeout_s,
        # After an answer sent before the whole body was read (408, 413), the rest of the body
        # is read and dropped for at most this long, then the connection closes.
        lingering_time=min(config.body_timeout_s, MAX_LINGER_S),
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def url_of(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


class Gateway:
    """A running gateway: its address, and ``stop`` (stop listening, finish requests, flush)."""

    def __init__(self, runner: web.AppRunner, writer: KafkaWriter, config: GatewayConfig) -> None:
        self.runner = runner
        self.writer = writer
        self.config = config
        self.url = url_of(runner)

    async def stop(self) -> int:
        """Stop; the number of records Kafka had not acknowledged by the end of the flush."""
        await self.runner.cleanup()
        return await asyncio.to_thread(self.writer.close, self.config.shutdown_timeout_s)


async def start_gateway(
    settings: Settings, config: GatewayConfig, clock: Callable[[], int] = wall_ms
) -> Gateway:
    """Create the topics (unless told not to), open the producer and listen.

    Raises BrokerError when Kafka is unreachable for the topic check, OSError when the port is
    taken.
    """
    if config.create_topics:
        await asyncio.to_thread(ensure_topics, settings)
    writer = KafkaWriter(
        open_producer(settings.brokers, config), settings.topic_names.transactions, config.max_queue
    )
    try:
        runner = await listen(make_app(settings, config, writer, clock), config)
    except BaseException:
        writer.close(0)
        raise
    return Gateway(runner, writer, config)


async def run_gateway(
    settings: Settings,
    config: GatewayConfig,
    *,
    stop: asyncio.Event,
    say: Callable[[str], None] = log.info,
) -> int:
    """Serve until ``stop`` is set, then shut down gracefully; records left undelivered."""
    gateway = await start_gateway(settings, config)
    say(
        f"fraud gateway: listening on {gateway.url}, producing to "
        f"{settings.topic_names.transactions} at {settings.brokers}"
    )
    try:
        await stop.wait()
    finally:
        undelivered = await gateway.stop()
    say(
        "fraud gateway: stopped, producer flushed"
        if not undelivered
        else f"fraud gateway: stopped, {undelivered} records not acknowledged by Kafka"
    )
    return undelivered


def serve_gateway(
    settings: Settings, config: GatewayConfig, say: Callable[[str], None] = log.info
) -> int:
    """Run the gateway until SIGTERM or SIGINT; the exit code for the CLI (1: records lost)."""
    undelivered = [0]

    async def main(stop: asyncio.Event) -> None:
        undelivered[0] = await run_gateway(settings, config, stop=stop, say=say)

    run_until_signalled(main)
    return 1 if undelivered[0] else 0
