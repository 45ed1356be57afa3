"""Malformed input for the fault suite: messages the worker must dead-letter, never decide.

Pure and seeded. Kinds: random bytes, truncated Transactions, other messages of the contract
on the transactions topic without the ``fraud.contract`` header (a Decision, an Alert, a Label:
type confusion), invalid field values drawn with hypothesis, null values with or without a key,
huge strings, an unknown contract header and a batch header on garbage. ``rejected`` is the
worker's own check of a transactions record (``parse_transactions``: type header, decode,
validation, key), so a drawn message it would take is drawn again, and the unit tests hold
every message of the other kinds to it. Ids of the type-confused messages start with
``malformed-`` and name no customer or terminal of a simulated file, so if the worker decides
one it shows up as an unexpected decision without touching the file's windows.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from fraud.contracts.partitioning import CONTRACT_HEADER, TRANSACTION_BATCH, contract_of
from fraud.contracts.records import RawRecord
from fraud.scoring.batch import parse_transactions
from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import Action, Decision
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction

Headers = list[tuple[str, str | bytes | None]]
EVENT_MS = 1_522_540_800_000  # 2018-04-01, the simulator's first day
NOW_MS = 1_800_000_000_000  # validation's "now" for the checks here (2027)
MAX_FUTURE_MS = 2 * 86_400_000
HUGE = 300_000  # characters of a huge string (a dead letter must stay under 1 MB)

KINDS = (
    "random-bytes",
    "truncated",
    "decision",
    "alert",
    "label",
    "invalid-field",
    "null-value",
    "null-key-invalid",
    "huge-string",
    "unknown-contract",
    "garbage-batch",
)


@dataclass(frozen=True, slots=True)
class Malformed:
    kind: str
    key: bytes | None
    value: bytes | None
    headers: Headers | None = None


def rejected(key: bytes | None, value: bytes | None, headers: Headers | None = None) -> bool:
    """True when the worker's customer stage dead-letters the transactions record ``key``,
    ``value``, ``headers`` and takes nothing of it: the check it makes of every record
    (``fraud.scoring.batch.parse_transactions``), but for a batch's partition check."""
    # As the worker reads them: Kafka carries a str header value as its UTF-8 bytes.
    pairs = [(k, v.encode() if isinstance(v, str) else v) for k, v in headers or ()]
    record = RawRecord(key, value, "transactions", 0, 0, 0, contract_of(pairs))
    dead: list[DeadLetter] = []
    parsed = parse_transactions([record], NOW_MS, MAX_FUTURE_MS, dead)
    return not parsed.txs and bool(dead)


def base_transaction(n: int) -> Transaction:
    return Transaction(
        transaction_id=f"malformed-{n}",
        customer_id=f"malformed-c{n % 97}",
        terminal_id=f"malformed-t{n % 89}",
        amount_minor=1234,
        currency="EUR",
        event_time_ms=EVENT_MS + n,
    )


def invalid_fields(seed: int, count: int) -> list[Transaction]:
    """``count`` Transactions each with one field set to a value the worker refuses, drawn
    by hypothesis (derandomised by ``seed``); draws the rules accept are left out."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    ids = st.sampled_from(["transaction_id", "customer_id", "terminal_id"])
    mutation = st.one_of(
        st.tuples(st.just("amount_minor"), st.integers(-(2**63), -1)),
        st.tuples(st.just("currency"), st.text(max_size=8)),
        st.tuples(st.just("event_time_ms"), st.integers(-(2**63), 0)),
        st.tuples(st.just("event_time_ms"), st.integers(NOW_MS + MAX_FUTURE_MS + 1, 2**63 - 1)),
        st.tuples(st.just("utc_offset_minutes"), st.integers(841, 2**31 - 1)),
        st.tuples(st.just("utc_offset_minutes"), st.integers(-(2**31), -841)),
        st.tuples(st.just("latitude"), st.floats().filter(lambda x: not -90 <= x <= 90)),
        st.tuples(st.just("longitude"), st.floats().filter(lambda x: not -180 <= x <= 180)),
        st.tuples(ids, st.just("")),
        st.tuples(ids, st.text(min_size=257, max_size=400)),
    )  # fmt: skip
    out: list[Transaction] = []

    @hypothesis_seed(seed)
    @settings(
        max_examples=count, database=None, phases=[Phase.generate], deadline=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(mutation)
    def draw(change: tuple[str, object]) -> None:
        tx = base_transaction(len(out))
        name, value = change
        try:
            setattr(tx, name, value)
            if name == "latitude":
                tx.longitude = 0.0
            if name == "longitude":
                tx.latitude = 0.0
            data = tx.SerializeToString()
        except (ValueError, TypeError):  # e.g. a lone surrogate protobuf will not encode
            return
        # Keyed by its own customer_id (as _invalid_field sends it): refused for the field.
        if rejected(tx.customer_id.encode(), data):
            out.append(tx)

    draw()
    return out


class MalformedSource:
    """An endless, seeded stream of malformed messages, the kinds in turn."""

    def __init__(self, seed: int, pool: int = 500) -> None:
        self._rng = random.Random(seed)
        self._invalid = invalid_fields(seed, pool)
        self._n = 0

    def __iter__(self) -> Iterator[Malformed]:
        return self

    def __next__(self) -> Malformed:
        n = self._n
        self._n += 1
        kind = KINDS[n % len(KINDS)]
        if kind == "huge-string" and n % (50 * len(KINDS)) != len(KINDS) - 3:
            kind = "random-bytes"  # huge strings are rare: they are large on the wire
        make: Callable[[int], Malformed] = getattr(self, "_" + kind.replace("-", "_"))
        return make(n)

    def _key(self, n: int) -> bytes:
        return f"malformed-c{n % 97}".encode()

    def _random_bytes(self, n: int) -> Malformed:
        while True:
            data = self._rng.randbytes(self._rng.randint(1, 200))
            if rejected(self._key(n), data):
                return Malformed("random-bytes", self._key(n), data)

    def _truncated(self, n: int) -> Malformed:
        full = base_transaction(n).SerializeToString()
        while True:
            data = full[: self._rng.randint(1, len(full) - 1)]
            if rejected(self._key(n), data):
                return Malformed("truncated", self._key(n), data)

    def _decision(self, n: int) -> Malformed:
        tx = base_transaction(n)
        decision = Decision(
            transaction_id=tx.transaction_id, customer_id=tx.customer_id,
            terminal_id=tx.terminal_id, amount_minor=tx.amount_minor, currency=tx.currency,
            event_time_ms=tx.event_time_ms, action=Action.ALLOW, features={"x": 1.0},
            rules_fired=["r1"], rules_version="malformed", decided_at_ms=tx.event_time_ms,
        )  # fmt: skip
        # With a score, field 8 reads as a latitude without a longitude (invalid_location).
        # Without one, fields 1-7 and 10 read as a valid Transaction: what refuses it is that a
        # record without the header must hold no unknown field, and the features (9, a map
        # where a Transaction has a double), rules_version (11) and decided_at_ms (15) are.
        if n % 2:
            decision.score = 0.25
        return Malformed("decision", self._key(n), decision.SerializeToString())

    def _alert(self, n: int) -> Malformed:
        decision = Decision(transaction_id=f"malformed-{n}", customer_id=f"malformed-c{n % 97}")
        alert = Alert(alert_id=f"malformed-a{n}", type="REVIEW", decision=decision)
        return Malformed("alert", self._key(n), alert.SerializeToString())

    def _label(self, n: int) -> Malformed:
        label = Label(
            transaction_id=f"malformed-{n}", customer_id=f"malformed-c{n % 97}",
            terminal_id=f"malformed-t{n % 89}", fraud=True, transaction_time_ms=EVENT_MS,
            event_time_ms=EVENT_MS + 1,
        )  # fmt: skip
        return Malformed("label", self._key(n), label.SerializeToString())

    def _invalid_field(self, n: int) -> Malformed:
        tx = self._invalid[n % len(self._invalid)]
        return Malformed("invalid-field", tx.customer_id.encode(), tx.SerializeToString())

    def _null_value(self, n: int) -> Malformed:
        return Malformed("null-value", self._key(n) if n % 2 else None, None)

    def _null_key_invalid(self, n: int) -> Malformed:
        tx = base_transaction(n)
        tx.amount_minor = -1 - n
        return Malformed("null-key-invalid", None, tx.SerializeToString())

    def _huge_string(self, n: int) -> Malformed:
        tx = base_transaction(n)
        if n % 2:
            tx.currency = "E" * HUGE
        else:
            tx.transaction_id = "malformed-" + "x" * HUGE
        return Malformed("huge-string", self._key(n), tx.SerializeToString())

    def _unknown_contract(self, n: int) -> Malformed:
        return Malformed(
            "unknown-contract", self._key(n), base_transaction(n).SerializeToString(),
            [(CONTRACT_HEADER, b"fraud.v1.Nothing")],
        )  # fmt: skip

    def _garbage_batch(self, n: int) -> Malformed:
        while True:
            data = b"\xff" + self._rng.randbytes(self._rng.randint(1, 64))
            headers: Headers = [(CONTRACT_HEADER, TRANSACTION_BATCH)]
            if rejected(self._key(n), data, headers):
                return Malformed("garbage-batch", self._key(n), data, headers)
