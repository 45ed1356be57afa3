"""Decode and validate what arrives on Kafka; errors are values that end in a dead-letter topic.

The wire format of every topic is the protobuf contract in ``proto/fraud/v1/`` (generated code in
``fraud/v1/``). Nothing here touches Kafka: the agents pass bytes in and get values out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet

from fraud.contracts.currency import EXPONENTS, is_known
from fraud.contracts.partitioning import (
    CONTRACT_HEADER,
    ENRICHED_BATCH,
    ENRICHED_TRANSACTION,
    LABEL,
    TRANSACTION,
    TRANSACTION_BATCH,
)
from fraud.contracts.units import HOUR_MS
from fraud.v1.decision_pb2 import Action, Decision
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction

M = TypeVar("M", bound=Message)

MAX_UTC_OFFSET_MINUTES = 14 * 60
# Characters (not bytes) of transaction_id, customer_id and terminal_id; longer ones are refused.
MAX_ID_LENGTH = 256
MAX_LATITUDE = 90.0
MAX_LONGITUDE = 180.0
# Unknown field numbers named in a wrong_type detail; the rest are counted.
MAX_FIELDS_SHOWN = 8


@dataclass(frozen=True, slots=True)
class Rejected:
    """Why a message was refused: a short reason code and a human-readable detail."""

    reason: str
    detail: str


# The types (``fraud.contract`` header) each input topic takes; the first is what a record
# without the header is taken to be.
TRANSACTIONS_TAKE = (TRANSACTION, TRANSACTION_BATCH)
LABELS_TAKE = (LABEL,)
BY_TERMINAL_TAKE = (ENRICHED_TRANSACTION, ENRICHED_BATCH)


def check_type(contract: bytes | None, takes: tuple[bytes, ...]) -> Rejected | None:
    """``None`` when a record whose ``fraud.contract`` header is ``contract`` (None: no header,
    the topic's default type) is of a type its topic takes; else a ``wrong_type`` refusal."""
    if contract is None or contract in takes:
        return None
    shown = contract.decode("utf-8", "replace")
    wanted = ", ".join(t.decode() for t in takes)
    return Rejected(
        "wrong_type", f"header {CONTRACT_HEADER}={shown!r}: this topic takes {wanted} only"
    )


def decode_as(message_type: type[M], value: bytes | None, contract: bytes | None) -> M | Rejected:
    """Parse ``value`` as ``message_type``, the one decode of every input record.

    ``contract`` is the record's ``fraud.contract`` header (``check_type`` has passed it). With
    the header, unknown fields are kept (forward compatibility: the producer named the type).
    Without it, the record is taken as ``message_type`` only if it holds none: field numbers
    overlap between the contract's types (a Decision parses as a Transaction), and a field that
    ``message_type`` lacks, or has with another wire type, says it is another type.
    """
    name = message_type.DESCRIPTOR.full_name
    message = message_type()
    try:
        message.ParseFromString(value or b"")
    except DecodeError as exc:
        hint = (
            f" (looks like JSON; the topic carries {name} protobuf)"
            if (value or b"")[:1] in (b"{", b"[")
            else ""
        )
        return Rejected("decode_error", f"not a {name}: {exc}{hint}")
    if contract is None:
        # Top-level fields only: of the default types only EnrichedTransaction nests a message,
        # and the worker always sends it under the header.
        unknown = UnknownFieldSet(message)
        if len(unknown):
            return Rejected("wrong_type", _foreign_detail(message_type, unknown))
    return message


def _foreign_detail(message_type: type[Message], unknown: UnknownFieldSet) -> str:
    """One line: which fields of a headerless record ``message_type`` does not have."""
    name = message_type.DESCRIPTOR.full_name
    known = message_type.DESCRIPTOR.fields_by_number
    numbers = sorted({unknown[i].field_number for i in range(len(unknown))})
    shown = [
        f"{n} (of another wire type)" if n in known else str(n) for n in numbers[:MAX_FIELDS_SHOWN]
    ]
    more = len(numbers) - len(shown)
    listed = ", ".join(shown) + (f" and {more} more" if more else "")
    fields = f"fields {listed} are" if len(numbers) > 1 else f"field {listed} is"
    return (
        f"no {CONTRACT_HEADER} header, and {fields} not in {name} (is it another message "
        f"type?); set the header to decode it as {name}"
    )


def decode_transaction(
    value: bytes | None, contract: bytes | None = None
) -> Transaction | Rejected:
    """Parse a ``fraud.v1.Transaction`` from bytes, or say why it cannot be parsed; without the
    header (``contract`` None) it must hold no field a Transaction lacks (``decode_as``)."""
    if not value:
        return Rejected("decode_error", "empty message")
    return decode_as(Transaction, value, contract)


def validate_transaction(tx: Transaction, now_ms: int, max_future_ms: int) -> Rejected | None:
    """Check a decoded transaction; ``None`` when it is valid.

    History is valid (a replay of 2018 is fine); before 1970 or more than ``max_future_ms``
    ahead of ``now_ms`` is not.
    """
    for name in ("transaction_id", "customer_id", "terminal_id"):
        value = getattr(tx, name)
        if not value:
            return Rejected(f"missing_{name}", f"{name} is empty")
        if len(value) > MAX_ID_LENGTH:
            return Rejected(f"invalid_{name}", f"{name} is longer than {MAX_ID_LENGTH}")
    if tx.amount_minor < 0:
        return Rejected("invalid_amount", f"amount_minor {tx.amount_minor} is negative")
    if not is_known(tx.currency):
        return Rejected("unknown_currency", f"currency {tx.currency!r} is not an ISO 4217 code")
    if tx.event_time_ms <= 0:
        return Rejected("invalid_event_time", f"event_time_ms {tx.event_time_ms} is not after 1970")
    if tx.event_time_ms > now_ms + max_future_ms:
        ahead_h = (tx.event_time_ms - now_ms) / HOUR_MS
        return Rejected("invalid_event_time", f"event_time_ms is {ahead_h:.1f} h in the future")
    if abs(tx.utc_offset_minutes) > MAX_UTC_OFFSET_MINUTES:
        return Rejected("invalid_utc_offset", f"utc_offset_minutes {tx.utc_offset_minutes}")
    if tx.HasField("latitude") != tx.HasField("longitude"):
        return Rejected("invalid_location", "latitude and longitude must come together")
    if tx.HasField("latitude"):
        lat, lon = tx.latitude, tx.longitude
        if (
            not (math.isfinite(lat) and math.isfinite(lon))
            or abs(lat) > MAX_LATITUDE
            or abs(lon) > MAX_LONGITUDE
        ):
            return Rejected("invalid_location", f"location ({lat}, {lon}) is not a coordinate")
    return None


def parse_transaction(
    value: bytes | None, now_ms: int, max_future_ms: int, contract: bytes | None = None
) -> Transaction | Rejected:
    """Decode then validate (``contract``: the record's ``fraud.contract`` header)."""
    tx = decode_transaction(value, contract)
    if isinstance(tx, Rejected):
        return tx
    return validate_transaction(tx, now_ms, max_future_ms) or tx


def parse_label(value: bytes | None, contract: bytes | None = None) -> Label | Rejected:
    """Decode then validate a ``fraud.v1.Label`` (``contract``: the record's header)."""
    label = decode_as(Label, value, contract)
    if isinstance(label, Rejected):
        return label
    if not label.transaction_id or not label.terminal_id or label.event_time_ms <= 0:
        return Rejected("invalid_label", "label needs transaction_id, terminal_id, event_time_ms")
    return label


def action_name(action: int) -> str:
    return Action.Name(action)


def to_json(message: Message) -> str:
    """One-line JSON of a message, with field names as in the .proto files."""
    return json_format.MessageToJson(
        message, preserving_proto_field_name=True, indent=None, sort_keys=True
    )


def _major(amount_minor: int, currency: str) -> str:
    """Exact major-unit amount with the currency's decimals ("50.00" EUR, "5000" JPY)."""
    exp = EXPONENTS.get(currency, 2)
    return str(Decimal(amount_minor).scaleb(-exp))


def decision_summary(decision: Decision) -> str:
    """A human-readable line for a decision or an alert."""
    rules = ",".join(decision.rules_fired) or "-"
    return (
        f"{action_name(decision.action):6} tx={decision.transaction_id} "
        f"customer={decision.customer_id} terminal={decision.terminal_id} "
        f"amount={_major(decision.amount_minor, decision.currency)} {decision.currency} "
        f"score={decision.score:.3f} rules={rules}"
    )
