"""Helpers for tests and tools: a controllable clock, raw records, random transactions.

Nothing here touches Kafka; ``make_record`` builds the ``RawRecord`` an agent would receive.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from fraud.contracts.currency import exponent
from fraud.contracts.records import RawRecord
from fraud.contracts.units import DAY_MS, HOUR_MS, LABEL_DELAY_DAYS
from fraud.settings import Settings
from fraud.v1.decision_pb2 import Decision
from fraud.v1.transaction_pb2 import Transaction

# A card has one billing currency; random customers get one of these (exponents 2, 2, 0, 3).
DEFAULT_CURRENCIES: tuple[str, ...] = ("EUR", "USD", "JPY", "BHD")


class FakeClock:
    """Wall-clock milliseconds that only move when told; callable like ``Detector``'s clock."""

    def __init__(self, now_ms: int = 1_700_000_000_000) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int = 1) -> int:
        """Move forward by ``ms`` (not backwards); return the new time."""
        if ms < 0:
            raise ValueError(f"a clock does not go back: advance({ms})")
        self.now_ms += ms
        return self.now_ms


def make_record(
    tx: Transaction,
    partition: int = 0,
    offset: int = 0,
    topic: str = "transactions",
    timestamp_ms: int | None = None,
) -> RawRecord:
    """The record a producer keying by customer_id would write for ``tx``.

    ``timestamp_ms`` (the Kafka message timestamp) defaults to the transaction's event time.
    """
    return RawRecord(
        key=tx.customer_id.encode(),
        value=tx.SerializeToString(),
        topic=topic,
        partition=partition,
        offset=offset,
        timestamp_ms=tx.event_time_ms if timestamp_ms is None else timestamp_ms,
    )


def random_transactions(
    rng: np.random.Generator,
    n: int,
    n_customers: int,
    start_ms: int,
    span_days: int,
    *,
    grid_ms: int = 6 * HOUR_MS,
    currencies: tuple[str, ...] = DEFAULT_CURRENCIES,
) -> list[Transaction]:
    """``n`` valid transactions of ``n_customers`` customers over ``span_days`` from ``start_ms``.

    Sorted by event time (stable: ties keep generation order). Times sit on a coarse grid of
    ``grid_ms`` so that there are many ties and many gaps of exactly 1, 7 or 30 days. Each
    customer has one currency; amounts are mostly small with a tail above 220 major units and
    a few zeros. Some transactions carry a location.
    """
    if n_customers < 1 or span_days < 1 or grid_ms < 1:
        raise ValueError("n_customers, span_days and grid_ms must be positive")
    slots = max(1, span_days * DAY_MS // grid_ms)
    customer_currency = [currencies[int(i)] for i in rng.integers(0, len(currencies), n_customers)]
    txs: list[Transaction] = []
    for i in range(n):
        c = int(rng.integers(0, n_customers))
        currency = customer_currency[c]
        major = float(rng.lognormal(mean=3.5, sigma=1.2))
        if rng.random() < 0.03:
            major = 0.0
        scale = 10 ** exponent(currency)
        tx = Transaction(
            transaction_id=f"tx-{i:06d}",
            customer_id=f"cust-{c:04d}",
            terminal_id=f"term-{int(rng.integers(0, 50)):03d}",
            amount_minor=round(major * scale),
            currency=currency,
            event_time_ms=start_ms + int(rng.integers(0, slots)) * grid_ms,
            utc_offset_minutes=int(rng.choice([-300, 0, 60, 540])),
        )
        if rng.random() < 0.3:
            tx.latitude = float(rng.uniform(-90, 90))
            tx.longitude = float(rng.uniform(-180, 180))
        txs.append(tx)
    txs.sort(key=lambda t: t.event_time_ms)
    return txs


class StepReplay:
    """Replay rows of a file in closed-loop steps: produce a step, wait for its decisions.

    Terminal features need the customer partitions to progress together (within the allowed
    lateness, one day of event time, or state is evicted that a lagging transaction still
    needs); a worker behind a large backlog can break that (docs/performance.md, exactness).
    Small steps keep a run inside that bound whatever the machine's speed, so exactness checks
    do not depend on throughput. Labels are published ``label_delay_ms`` after each transaction.
    """

    def __init__(
        self,
        settings: Settings,
        path: Path,
        workdir: Path,
        label_delay_ms: int = LABEL_DELAY_DAYS * DAY_MS,
    ) -> None:
        from fraud.tools.tail import open_consumer

        self.settings = settings
        self.lines = path.read_text().splitlines(keepends=True)
        self.workdir = workdir
        self.label_delay_ms = label_delay_ms
        self.consumer = open_consumer(settings, settings.topic_names.decisions, True)
        self.decisions: list[Decision] = []
        self.transactions = self.labels = 0

    def run(self, start: int, stop: int, step: int = 50, timeout_s: float = 60.0) -> None:
        from fraud.ingest.replay import replay

        for first in range(start, stop, step):
            chunk = self.workdir / "step.csv"
            chunk.write_text(
                self.lines[0] + "".join(self.lines[1 + first : 1 + min(stop, first + step)])
            )
            stats = replay(self.settings, chunk, label_delay_ms=self.label_delay_ms)
            self.transactions += stats.transactions
            self.labels += stats.labels
            if not self.collect(self.transactions, timeout_s):
                raise RuntimeError(
                    f"{self.transactions - len(self.decisions)} decisions missing after the "
                    f"step at row {first}"
                )

    def collect(self, want: int, timeout_s: float) -> bool:
        """Read decisions until ``want`` in all; False if they did not come in time."""
        deadline = time.monotonic() + timeout_s
        while len(self.decisions) < want and time.monotonic() < deadline:
            for msg in self.consumer.consume(1000, 0.2):
                if msg.error() is None:
                    decision = Decision()
                    decision.ParseFromString(msg.value() or b"")
                    self.decisions.append(decision)
        return len(self.decisions) >= want

    def close(self) -> None:
        self.consumer.close()
