"""``fraud gateway``: an HTTP endpoint that validates JSON transactions and produces them to Kafka.

Endpoints::

    POST /v1/transactions   one JSON transaction object, or a JSON array of them (bulk)
        202 {"accepted": n, "ids": [transaction ids, in request order]}
            once Kafka acknowledged every one of them (acks=all, idempotent producer)
        400 {"error": reason, "detail": text, "field": name, "item": index}
            nothing of the request was produced; "item" (0-based) only for a JSON array,
            "field" when one field is to blame
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
protobuf JSON of a Transaction (``fraud.contracts.wire.to_json``) is accepted as is. Each document
is
then checked by ``fraud.contracts.wire.validate_transaction``, the worker's own rules, so what the
gateway accepts the worker does not dead-letter.

Layout: the request parsing (:func:`parse_body`, :func:`parse_document`) is pure and takes the
time as an argument; :class:`KafkaWriter` moves bytes to Kafka; :func:`start_gateway` wires both
into an aiohttp server. The field parsers are our own rather than ``fraud.ingest.files``' private
helpers because an HTTP client needs the field name and reason as data, not a message; the
shared semantics come from the same public functions (``fraud.contracts.currency.to_minor``,
``fraud.ingest.files.parse_event_time``) and ``validate_transaction``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from fraud.broker import ensure_topics
from fraud.contracts.currency import EXPONENTS, CurrencyError, to_minor
from fraud.contracts.units import INT64_MAX as _INT64_MAX
from fraud.contracts.units import INT64_MIN as _INT64_MIN
from fraud.contracts.wire import MAX_UTC_OFFSET_MINUTES, Rejected, validate_transaction
from fraud.ingest.files import parse_event_time
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
    "make_app",
    "parse_body",
    "parse_document",
    "run_gateway",
    "serve_gateway",
    "start_gateway",
    "to_document",
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
_IDS = ("transaction_id", "customer_id", "terminal_id")
_INT_RE = re.compile(r"[+-]?\d+", re.ASCII)


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


class _Bad(Exception):
    """A bad field value inside :func:`parse_document`; becomes an :class:`Invalid`."""

    def __init__(self, reason: str, field: str, detail: str) -> None:
        super().__init__(detail)
        self.invalid = Invalid(reason, f"field {field!r}: {detail}", field)


def _show(value: object, limit: int = 60) -> str:
    text = json.dumps(value, default=repr)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def _wrong_type(field: str, value: object, expected: str) -> _Bad:
    return _Bad("wrong_type", field, f"expected {expected}, got {_kind(value)} {_show(value)}")


def _ident(doc: Mapping[str, Any], field: str) -> str:
    value = doc.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _Bad(f"missing_{field}", field, "missing or empty")
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _wrong_type(field, value, "a string")


def _integer(field: str, value: object) -> int:
    """A JSON integer or a string of decimal digits (the protobuf JSON form of int64)."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        number = int(value.strip())
    else:
        raise _wrong_type(field, value, "an integer")
    if not _INT64_MIN <= number <= _INT64_MAX:
        raise _Bad(f"invalid_{field}", field, f"{number} is out of range")
    return number


def _currency(doc: Mapping[str, Any], default: str) -> str:
    value = doc.get("currency")
    if value is None:
        return default
    if not isinstance(value, str):
        raise _wrong_type("currency", value, "an ISO 4217 code (string)")
    code = value.strip().upper()
    if not code:
        return default
    if code not in EXPONENTS:
        raise _Bad("unknown_currency", "currency", f"{_show(value)} is not an ISO 4217 code")
    return code


def _amount(doc: Mapping[str, Any], currency: str) -> tuple[str, int]:
    """(field used, amount in minor units)."""
    has_major, has_minor = doc.get("amount") is not None, doc.get("amount_minor") is not None
    if has_major and has_minor:
        raise _Bad("conflicting_fields", "amount", "give amount or amount_minor, not both")
    if has_minor:
        minor = _integer("amount_minor", doc["amount_minor"])
        field = "amount_minor"
    elif has_major:
        value = doc["amount"]
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise _wrong_type("amount", value, "a decimal number or string")
        try:
            minor = to_minor(value, currency)
        except CurrencyError as exc:
            raise _Bad("invalid_amount", "amount", str(exc)) from None
        if not _INT64_MIN <= minor <= _INT64_MAX:
            raise _Bad("invalid_amount", "amount", f"{_show(value)} is out of range")
        field = "amount"
    else:
        raise _Bad("missing_amount", "amount", "missing (give amount or amount_minor)")
    if minor < 0:
        raise _Bad("invalid_amount", field, f"{_show(doc[field])} is negative")
    return field, minor


def _event_time(doc: Mapping[str, Any]) -> tuple[str, int, int | None]:
    """(field used, epoch ms, UTC offset minutes carried by an ISO time or None)."""
    has_time, has_ms = doc.get("event_time") is not None, doc.get("event_time_ms") is not None
    if has_time and has_ms:
        raise _Bad("conflicting_fields", "event_time", "give event_time or event_time_ms, not both")
    if has_ms:
        return "event_time_ms", _integer("event_time_ms", doc["event_time_ms"]), None
    if not has_time:
        raise _Bad("missing_event_time", "event_time", "missing (give event_time or event_time_ms)")
    value = doc["event_time"]
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _wrong_type("event_time", value, "an ISO 8601 string or an epoch number")
    try:
        ms, offset = parse_event_time(value)
    except ValueError as exc:
        raise _Bad("invalid_event_time", "event_time", f"{_show(value)}: {exc}") from None
    return "event_time", ms, offset


def _offset(doc: Mapping[str, Any]) -> int | None:
    value = doc.get("utc_offset_minutes")
    if value is None:
        return None
    minutes = _integer("utc_offset_minutes", value)
    if abs(minutes) > MAX_UTC_OFFSET_MINUTES:
        raise _Bad(
            "invalid_utc_offset",
            "utc_offset_minutes",
            f"{minutes} is not within +-{MAX_UTC_OFFSET_MINUTES} minutes",
        )
    return minutes


def _coordinate(doc: Mapping[str, Any], field: str) -> float | None:
    value = doc.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _wrong_type(field, value, "a number of degrees")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise _wrong_type(field, value, "a number of degrees") from None
    limit = 90.0 if field == "latitude" else 180.0
    if not math.isfinite(number) or abs(number) > limit:
        raise _Bad("invalid_location", field, f"{_show(value)} is not within +-{limit:g} degrees")
    return number


def _device(doc: Mapping[str, Any]) -> str:
    value = doc.get("device_id")
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise _wrong_type("device_id", value, "a string")


def _field_of(rejected: Rejected, amount_field: str, time_field: str) -> str | None:
    """The document field behind a ``validate_transaction`` reason."""
    for name in _IDS:
        if rejected.reason.endswith(name):
            return name
    return {
        "invalid_amount": amount_field,
        "unknown_currency": "currency",
        "invalid_event_time": time_field,
        "invalid_utc_offset": "utc_offset_minutes",
        "invalid_location": "latitude",
    }.get(rejected.reason)


def parse_document(
    doc: object, *, now_ms: int, max_future_ms: int, default_currency: str = "EUR"
) -> Transaction | Invalid:
    """One decoded JSON document as a valid Transaction, or why it is refused (see module doc)."""
    if not isinstance(doc, dict):
        return Invalid("not_an_object", f"expected a JSON object, got {_kind(doc)}")
    unknown = sorted(str(key) for key in doc if key not in FIELDS)
    if unknown:
        return Invalid(
            "unknown_field",
            f"unknown field {unknown[0]!r}; fields: {', '.join(sorted(FIELDS))}",
            unknown[0],
        )
    try:
        ids = [_ident(doc, name) for name in _IDS]
        currency = _currency(doc, default_currency)
        amount_field, amount_minor = _amount(doc, currency)
        time_field, event_ms, time_offset = _event_time(doc)
        offset = _offset(doc)
        latitude = _coordinate(doc, "latitude")
        longitude = _coordinate(doc, "longitude")
        if (latitude is None) != (longitude is None):
            missing = "longitude" if longitude is None else "latitude"
            raise _Bad("invalid_location", missing, "latitude and longitude must come together")
        device = _device(doc)
    except _Bad as bad:
        return bad.invalid
    if offset is None:
        offset = time_offset or 0
    tx = Transaction(
        transaction_id=ids[0],
        customer_id=ids[1],
        terminal_id=ids[2],
        amount_minor=amount_minor,
        currency=currency,
        event_time_ms=event_ms,
        utc_offset_minutes=offset,
        latitude=latitude,
        longitude=longitude,
        device_id=device,
    )
    rejected = validate_transaction(tx, now_ms, max_future_ms)
    if rejected is not None:
        field = _field_of(rejected, amount_field, time_field)
        detail = f"field {field!r}: {rejected.detail}" if field else rejected.detail
        return Invalid(rejected.reason, detail, field)
    return tx


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
    if isinstance(decoded, list):
        if not decoded:
            return Invalid("empty_batch", "the JSON array has no transactions")
        txs: list[Transaction] = []
        for i, doc in enumerate(decoded):
            tx = parse_document(
                doc, now_ms=now_ms, max_future_ms=max_future_ms, default_currency=default_currency
            )
            if isinstance(tx, Invalid):
                return tx.at(i)
            txs.append(tx)
        return txs
    tx = parse_document(
        decoded, now_ms=now_ms, max_future_ms=max_future_ms, default_currency=default_currency
    )
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
        for name in ("max_body_bytes", "delivery_timeout_s", "max_queue"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class _State:
    settings: Settings
    config: GatewayConfig
    writer: KafkaWriter
    clock: Callable[[], int]


_STATE = web.AppKey("gateway", _State)
_PARSE_INLINE_BYTES = 32 * 1024


def _error(status: int, reason: str, detail: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason, "detail": detail}, status=status, headers=headers)


async def _post_transactions(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    limit = state.config.max_body_bytes
    too_large = f"body larger than {limit:,} bytes; split the batch"
    if request.content_length is not None and request.content_length > limit:
        return _error(413, "too_large", too_large)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:  # chunked body beyond client_max_size
        return _error(413, "too_large", too_large)
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
    try:
        # A safety net over message.timeout.ms, which settles every record on its own.
        await asyncio.wait_for(state.writer.send(txs), state.config.delivery_timeout_s + 5.0)
    except QueueFull as exc:
        return _error(503, "unavailable", f"{exc}; retry later", **{"Retry-After": "1"})
    except (DeliveryError, TimeoutError) as exc:
        log.warning("%s", exc or "no delivery report in time")
        detail = str(exc) or "Kafka did not acknowledge in time"
        return _error(503, "unavailable", f"{detail}; retry later", **{"Retry-After": "1"})
    return web.json_response(
        {"accepted": len(txs), "ids": [tx.transaction_id for tx in txs]}, status=202
    )


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def make_app(
    settings: Settings,
    config: GatewayConfig,
    writer: KafkaWriter,
    clock: Callable[[], int] = wall_ms,
) -> web.Application:
    app = web.Application(client_max_size=config.max_body_bytes)
    app[_STATE] = _State(settings, config, writer, clock)
    app.router.add_post("/v1/transactions", _post_transactions)
    app.router.add_get("/healthz", _healthz)
    return app


class Gateway:
    """A running gateway: its address, and ``stop`` (stop listening, finish requests, flush)."""

    def __init__(self, runner: web.AppRunner, writer: KafkaWriter, config: GatewayConfig) -> None:
        self.runner = runner
        self.writer = writer
        self.config = config
        host, port = runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

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
    runner = web.AppRunner(
        make_app(settings, config, writer, clock),
        access_log=None,
        handle_signals=False,
        shutdown_timeout=config.shutdown_timeout_s,
    )
    try:
        await runner.setup()
        await web.TCPSite(runner, config.host, config.port).start()
    except BaseException:
        await runner.cleanup()
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
