"""The worker loop without a broker or a Faust app: a fake consumer, a fake emitter, fake
events that count their acks, a fake monotonic clock, and the real aligner, label watermarks
and stages on in-memory stores.

Background flushes go through ``Background``, which holds each one until the test opens its
gate, so "a checkpoint in flight" is a state the test sets, not a race.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from fraud.contracts.partitioning import CONTRACT_HEADER, ENRICHED_BATCH, partition_for
from fraud.contracts.records import RawRecord
from fraud.contracts.units import CUSTOMER_STAGE_FEATURES
from fraud.contracts.units import INT64_MAX as END_TIME
from fraud.metrics import WorkerMetrics
from fraud.scoring.customer_stage import CustomerStage
from fraud.scoring.policy import Policy, load_policy
from fraud.scoring.terminal_stage import TerminalStage
from fraud.settings import Settings
from fraud.testing import FakeClock, make_record
from fraud.v1.decision_pb2 import INCOMPLETE_LABELS, Decision
from fraud.v1.enriched_pb2 import EnrichedBatch, EnrichedTransaction
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction
from fraud.windows.store import InMemoryStore
from fraud.worker.checkpoint import Checkpoints, Delivery, Offsets
from fraud.worker.loop import WorkerLoop
from fraud.worker.partitions import TopicPartition, by_terminal_topic
from fraud.worker.source_marks import encode_marks

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
T = 1_522_540_800_000 + 40 * DAY_MS  # event time of the transactions under test
P = 2  # partitions of every topic
SETTINGS = Settings(partitions=P, checkpoint_s=0.2, label_wait_ms=250, align_slack_ms=0)
REPARTITION = by_terminal_topic(SETTINGS)
TOPICS = ("transactions", "labels", REPARTITION)
GARBAGE = b"\xff\xff\xff\xff"


def customer_on(partition: int, n: int = 0) -> str:
    """The ``n``-th customer id whose records go to ``partition``."""
    found = [c for c in (f"cust-{i}" for i in range(100)) if partition_for(c, P) == partition]
    return found[n]


@pytest.fixture(scope="module")
def policy() -> Policy:
    """The default decision table (tables/rules/v1.csv), no model."""
    return load_policy(Settings().rules_path)


class FakeEvent:
    """A consumed message that counts its acks and increfs, in the journal too."""

    def __init__(self, name: str, journal: list[tuple[str, str]]) -> None:
        self.name = name
        self.journal = journal
        self.acks = 0
        self.increfs = 0

    @property
    def message(self) -> FakeEvent:
        return self

    def incref(self) -> None:
        self.increfs += 1

    def ack(self) -> bool:
        self.acks += 1
        self.journal.append(("ack", self.name))
        return True


class FakeConsumer:
    def __init__(self) -> None:
        self.assigned: set[TopicPartition] = {(t, p) for t in TOPICS for p in range(P)}
        self.highs: dict[TopicPartition, int] = {tp: 0 for tp in self.assigned}
        self.starts: dict[TopicPartition, int] = {}
        self.fetch_positions: dict[TopicPartition, int] = {}
        self.handed_next: dict[TopicPartition, int] = {}
        self.paused: set[TopicPartition] = set()

    def assignment(self) -> Set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highs.get(tp)

    def committed(self, tp: TopicPartition) -> int | None:
        return self.starts.get(tp)

    def fetched(self, tp: TopicPartition) -> int | None:
        return self.fetch_positions.get(tp)

    def handed(self, tp: TopicPartition) -> int | None:
        return self.handed_next.get(tp)

    def polled_at(self, tp: TopicPartition) -> float | None:
        return None

    def not_fetched(self) -> Set[TopicPartition]:
        return set(self.paused)

    def pause_partitions(self, tps: Iterable[TopicPartition]) -> None:
        self.paused.update(tps)

    def resume_partitions(self, tps: Iterable[TopicPartition]) -> None:
        self.paused.difference_update(tps)


@dataclass(frozen=True)
class Sent:
    topic: str
    key: bytes | None
    value: bytes
    partition: int | None
    headers: Sequence[tuple[str, bytes]] | None
    offset: int | None  # assigned when sent with track_offset


class FakeEmitter:
    """Keeps what is sent; a flush "delivers" the tracked messages at consecutive offsets."""

    def __init__(self, journal: list[tuple[str, str]]) -> None:
        self.journal = journal
        self.sent: list[Sent] = []
        self.flushes = 0
        self.commits: list[dict[TopicPartition, int]] = []  # the consumed offsets of each
        self._next: dict[TopicPartition, int] = {}
        self._delivered: Offsets = {}

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        track_offset: bool = False,
    ) -> None:
        offset = None
        if track_offset:
            tp = (topic, partition if partition is not None else 0)
            offset = self._next.get(tp, 0)
            self._next[tp] = offset + 1
            self._delivered[tp] = offset
        self.sent.append(Sent(topic, key, value, partition, headers, offset))
        self.journal.append(("send", topic))

    def hold_sends(self) -> None:
        self.journal.append(("hold", ""))

    def release_sends(self) -> None:
        self.journal.append(("release", ""))

    def deliver(self, consumed: Mapping[TopicPartition, int]) -> Offsets:
        self.flushes += 1
        self.commits.append(dict(consumed))
        self.journal.append(("flush", ""))
        delivered, self._delivered = self._delivered, {}
        return delivered

    def abandon(self) -> None:
        self.journal.append(("abandon", ""))

    def close(self) -> None:
        self.journal.append(("close", ""))

    def on(self, topic: str) -> list[Sent]:
        return [s for s in self.sent if s.topic == topic]

    def decisions(self) -> list[Decision]:
        return [Decision.FromString(s.value) for s in self.on("decisions")]


class FakeChangelog:
    def __init__(self) -> None:
        self.calls = 0
        self.offsets: list[Offsets] = []

    def send_changelog(self) -> int:
        self.calls += 1
        return 1

    def on_changelog_offsets(self, offsets: Offsets) -> None:
        self.offsets.append(offsets)


class Background:
    """Runs each flush once the gate is open (it starts open); counts flushes in flight."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()
        self.in_flight = 0
        self.most_in_flight = 0

    async def __call__(self, flush: Callable[[], Offsets]) -> Offsets:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await self.gate.wait()
            return flush()
        finally:
            self.in_flight -= 1


async def settle() -> None:
    """Let every ready task run until it waits again (event-loop turns, not time)."""
    for _ in range(50):
        await asyncio.sleep(0)


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(main())


class Harness:
    """A ``WorkerLoop`` over fakes; build it inside the test's event loop."""

    def __init__(self, policy: Policy, settings: Settings = SETTINGS) -> None:
        self.journal: list[tuple[str, str]] = []
        self.mono = FakeClock(0)  # milliseconds; the loop reads seconds
        self.wall = FakeClock(T + HOUR_MS)
        self.consumer = FakeConsumer()
        self.emitter = FakeEmitter(self.journal)
        self.changelogs = [FakeChangelog(), FakeChangelog()]
        self.background = Background()
        self.registry = CollectorRegistry()
        self.terminals = TerminalStage(InMemoryStore(), self.wall, policy)
        self.loop = WorkerLoop(
            settings,
            CustomerStage(InMemoryStore(), self.wall, partitions=P),
            self.terminals,
            self.consumer,
            self.emitter,
            self.changelogs,
            WorkerMetrics(self.registry),
            clock=lambda: self.mono.now_ms / 1000,
            in_background=self.background,
        )
        self._offsets: dict[TopicPartition, int] = {}
        self._events = 0

    def event(self, name: str | None = None) -> FakeEvent:
        self._events += 1
        return FakeEvent(name or f"e{self._events}", self.journal)

    def record(
        self, topic: str, partition: int, key: bytes, value: bytes, caught_up: bool = True
    ) -> RawRecord:
        """The next record of ``topic``'s ``partition``; the consumer's high watermark follows
        it unless ``caught_up`` is False."""
        tp = (topic, partition)
        offset = self._offsets.get(tp, 0)
        self._offsets[tp] = offset + 1
        if caught_up:
            self.consumer.highs[tp] = max(self.consumer.highs.get(tp, 0), offset + 1)
        return RawRecord(key, value, topic, partition, offset, T)

    def tx_records(self, txs: Sequence[Transaction], caught_up: bool = True) -> list[RawRecord]:
        out = []
        for tx in txs:
            p = partition_for(tx.customer_id, P)
            rec = self.record("transactions", p, tx.customer_id.encode(), b"", caught_up)
            out.append(make_record(tx, p, rec.offset, timestamp_ms=T))
        return out

    async def transactions(
        self, txs: Sequence[Transaction], caught_up: bool = True
    ) -> list[FakeEvent]:
        records = self.tx_records(txs, caught_up)
        events = [self.event(tx.transaction_id) for tx in txs]
        await self.loop.on_transactions(records, events)
        return events

    async def labels(self, labels: Sequence[Label]) -> list[FakeEvent]:
        records = [
            self.record(
                "labels", partition_for(lab.terminal_id, P), lab.terminal_id.encode(),
                lab.SerializeToString(), caught_up=False,
            )
            for lab in labels
        ]  # fmt: skip
        events = [self.event(f"label-{lab.transaction_id}") for lab in labels]
        await self.loop.on_labels(records, events)
        return events

    def hop_sent(self) -> list[Sent]:
        """The repartition records sent with transactions in them (not marks only)."""
        return [s for s in self.emitter.on(REPARTITION) if EnrichedBatch.FromString(s.value).items]

    def hop_records(self, items_only: bool = False, age_s: float = 0.0) -> list[RawRecord]:
        """What the emitter sent on the repartition topic, as the terminal agent reads it
        (``items_only``: not the marks-only records), produced ``age_s`` before it is read."""
        records = []
        produced_ms = int((time.time() - age_s) * 1000)
        for s in self.hop_sent() if items_only else self.emitter.on(REPARTITION):
            assert s.partition is not None and s.offset is not None
            records.append(
                RawRecord(
                    None, s.value, REPARTITION, s.partition, s.offset, produced_ms,
                    ENRICHED_BATCH,
                )
            )  # fmt: skip
        return records

    def metric(self, name: str, **labels: str) -> float:
        value = self.registry.get_sample_value(name, labels)
        assert value is not None, name
        return value

    def acked_once(self, events: Iterable[FakeEvent]) -> bool:
        return all(e.acks == 1 for e in events)


def tx(n: int, customer: str, terminal: str = "term-1", t: int = T) -> Transaction:
    return Transaction(
        transaction_id=f"tx-{n}",
        customer_id=customer,
        terminal_id=terminal,
        amount_minor=1000 + n,
        currency="EUR",
        event_time_ms=t,
    )


def fraud_label(tx: Transaction) -> Label:
    return Label(
        transaction_id=tx.transaction_id,
        customer_id=tx.customer_id,
        terminal_id=tx.terminal_id,
        fraud=True,
        transaction_time_ms=tx.event_time_ms,
        event_time_ms=tx.event_time_ms + 7 * DAY_MS,
    )


# --- release ------------------------------------------------------------------------------------


def test_only_what_the_aligner_releases_is_decided(policy: Policy) -> None:
    async def main() -> None:
        h = Harness(policy)
        ahead, behind = customer_on(0), customer_on(1)
        # partition 1 has a backlog not read yet: partition 0's transaction must wait for it
        h.consumer.highs[("transactions", 1)] = 5
        h.consumer.starts[("transactions", 1)] = 0
        [early] = await h.transactions([tx(1, ahead, t=T)])
        assert h.emitter.decisions() == []
        assert (early.increfs, early.acks) == (1, 0)
        assert h.loop.aligner.held() == 1

        # partition 1 reaches T - 1 h: what is at or before it goes, T waits
        await h.transactions([tx(2, behind, t=T - HOUR_MS)], caught_up=False)
        assert [d.transaction_id for d in h.emitter.decisions()] == ["tx-2"]
        assert h.loop.aligner.held() == 1

        # partition 1 read to its end: the timer releases the rest
        h.consumer.highs[("transactions", 1)] = 1
        await h.loop.tick()
        assert [d.transaction_id for d in h.emitter.decisions()] == ["tx-2", "tx-1"]
        assert h.loop.aligner.held() == 0
        assert early.acks == 0  # in line: acknowledged at the next checkpoint

    run(main)


# --- the single-stage switch ----------------------------------------------------------------------


def test_in_line_when_every_partition_is_owned_and_the_hop_is_drained(policy: Policy) -> None:
    async def main() -> None:
        h = Harness(policy)
        assert h.loop.hop.single_stage()
        events = await h.transactions([tx(1, customer_on(0)), tx(2, customer_on(1))])
        assert [d.transaction_id for d in h.emitter.decisions()] == ["tx-1", "tx-2"]
        assert h.hop_sent() == []
        assert h.metric("fraud_repartitioned_transactions_total") == 0
        assert [e.acks for e in events] == [0, 0]
        assert h.emitter.flushes == 0  # the decisions wait for the checkpoint's flush

    run(main)


@pytest.mark.parametrize("missing", TOPICS)
def test_a_partition_not_owned_turns_the_hop_on(policy: Policy, missing: str) -> None:
    async def main() -> None:
        h = Harness(policy)
        h.consumer.assigned.discard((missing, 1))
        assert not h.loop.hop.single_stage()
        # both on partition 0 of the transactions, which stays assigned
        events = await h.transactions([tx(1, customer_on(0), "T1"), tx(2, customer_on(0, 1), "T1")])
        assert h.emitter.decisions() == []
        [sent] = h.hop_sent()
        assert sent.partition == partition_for("T1", P)
        assert sent.headers == [(CONTRACT_HEADER, ENRICHED_BATCH)]
        batch = EnrichedBatch.FromString(sent.value)
        assert [e.transaction.transaction_id for e in batch.items] == ["tx-1", "tx-2"]
        assert h.metric("fraud_repartitioned_transactions_total") == 2
        # on the hop, a batch is acknowledged once delivered, at once
        assert h.acked_once(events)
        assert h.journal.index(("flush", "")) < h.journal.index(("ack", "tx-1"))
        assert h.loop.hop.sent[sent.partition] == sent.offset
        # and every other hop partition hears this worker's marks, in a marks-only record
        others = [s for s in h.emitter.on(REPARTITION) if s is not sent]
        assert {s.partition for s in others} == set(range(P)) - {sent.partition}
        assert all(EnrichedBatch.FromString(s.value).marks for s in [sent, *others])

    run(main)


def test_hop_records_sent_but_not_processed_keep_the_hop_on(policy: Policy) -> None:
    async def main() -> None:
        h = Harness(policy)
        h.consumer.assigned.discard(("labels", 0))
        await h.transactions([tx(1, customer_on(0), "T1")])
        [hop_record] = h.hop_records(items_only=True)
        p = hop_record.partition
        everything = h.hop_records()  # with the marks-only records to the other partition
        for rec in everything:
            h.consumer.highs[(REPARTITION, rec.partition)] = rec.offset + 1
        h.consumer.assigned.add(("labels", 0))  # every partition owned again ...
        assert not h.loop.hop.single_stage()  # ... but the hop's record is not processed yet

        await h.loop.on_repartitioned(
            everything, [h.event(f"hop{rec.offset}") for rec in everything]
        )
        assert [d.transaction_id for d in h.emitter.decisions()] == ["tx-1"]
        assert h.loop.hop.processed[p] == hop_record.offset + 1
        assert h.loop.hop.single_stage()
        await h.transactions([tx(2, customer_on(0), "T1")])
        assert [d.transaction_id for d in h.emitter.decisions()] == ["tx-1", "tx-2"]
        assert len(h.hop_records(items_only=True)) == 1

        # records on the hop from another worker, not processed here: not drained
        h.consumer.highs[(REPARTITION, 1 - p)] = 3
        assert not h.loop.hop.single_stage()

    run(main)


def test_a_rebalance_that_takes_a_partition_away_turns_the_hop_back_on(policy: Policy) -> None:
    async def main() -> None:
        h = Harness(policy)
        await h.transactions([tx(1, customer_on(0), "T1")])
        assert h.hop_sent() == [] and len(h.emitter.decisions()) == 1
        h.consumer.assigned.discard((REPARTITION, 0))
        assert not h.loop.hop.single_stage()
        await h.transactions([tx(2, customer_on(0), "T1")])
        assert len(h.hop_sent()) == 1 and len(h.emitter.decisions()) == 1

    run(main)


def test_single_stage_off_in_the_settings_always_takes_the_hop(policy: Policy) -> None:
    async def main() -> None:
        h = Harness(policy, SETTINGS.with_overrides(single_stage=False))
        assert not h.loop.hop.single_stage()
        events = await h.transactions([tx(1, customer_on(0))])
        assert h.emitter.decisions() == []
        assert len(h.hop_sent()) == 1
        assert h.acked_once(events)

    run(main)


# --- checkpoints ----------------------------------------------------------------------------------


def test_in_line_events_are_acked_once_after_their_checkpoint_is_flushed(policy: Policy) -> None:
    async def main() -> None:
        h = Harness(policy)
        first = await h.transactions([tx(1, customer_on(0))])
        h.mono.advance(100)
        second = await h.transactions([tx(2, customer_on(1))])
        assert h.emitter.flushes == 0 and not h.loop.checkpoints.due()
        h.background.gate.clear()
        h.mono.advance(100)  # checkpoint_s since the loop started: due with the next batch
        third = await h.transactions([tx(3, customer_on(0))])
        await settle()
        assert h.loop.checkpoints.flushing()
        assert [e.acks for e in first + second + third] == [0, 0, 0]

        h.background.gate.set()
        await h.loop.checkpoints.delivered()
        assert h.acked_once(first + second + third)
        flush = h.journal.index(("flush", ""))
        assert flush < min(h.journal.index(("ack", e.name)) for e in first + second + third)
        assert [c.calls for c in h.changelogs] == [1, 1]
        assert h.metric("fraud_changelog_records_total") == 2

        # the next checkpoint covers only the events since
        h.mono.advance(200)
        fourth = await h.transactions([tx(4, customer_on(1))])
        await h.loop.checkpoints.delivered()
        assert h.acked_once(first + second + third + fourth)
        assert h.emitter.flushes == 2

    run(main)


def test_at_most_one_checkpoint_is_in_flight(policy: Policy) -> None:
    async def main() -> None:
        h = Harness(policy)
        h.background.gate.clear()
        h.mono.advance(200)
        first = await h.transactions([tx(1, customer_on(0))])
        await settle()
        assert h.background.in_flight == 1
        h.mono.advance(200)
        # due again: the batch is decided, then waits for the checkpoint in flight
        blocked = asyncio.ensure_future(h.transactions([tx(2, customer_on(1))]))
        await settle()
        assert not blocked.done()
        assert len(h.emitter.decisions()) == 2
        assert h.background.in_flight == 1

        h.background.gate.set()
        second = await blocked
        await h.loop.checkpoints.delivered()
        assert h.background.most_in_flight == 1
        assert h.acked_once(first + second)
        assert h.journal.index(("ack", "tx-1")) < h.journal.index(("ack", "tx-2"))
        assert h.emitter.flushes == 2

    run(main)


def test_a_checkpoint_is_due_by_count_or_by_time() -> None:
    async def main() -> None:
        journal: list[tuple[str, str]] = []
        emitter = FakeEmitter(journal)
        clock = FakeClock(0)
        delivery = Delivery(
            emitter, [], WorkerMetrics(CollectorRegistry()), Background(), lambda _: None
        )
        # 0.25 s: the differences of the clock's seconds below are exact in binary
        checkpoints = Checkpoints(delivery, lambda: clock.now_ms / 1000, 0.25, max_events=3)
        assert not checkpoints.due()
        clock.advance(500)
        assert not checkpoints.due()  # nothing to acknowledge
        events = [FakeEvent(f"e{i}", journal) for i in range(3)]
        checkpoints.hold(events[:1])
        assert checkpoints.due()
        await checkpoints.if_due()
        await checkpoints.delivered()
        assert events[0].acks == 1 and not checkpoints.due()

        checkpoints.hold(events[1:2])
        clock.advance(249)
        assert not checkpoints.due()
        clock.advance(1)
        assert checkpoints.due()
        await checkpoints.if_due()
        await checkpoints.delivered()
        assert events[1].acks == 1

        many = [FakeEvent(f"m{i}", journal) for i in range(3)]
        checkpoints.hold(many[:2])
        assert not checkpoints.due()
        checkpoints.hold(many[2:])
        assert checkpoints.due()  # 3 events, no time passed
        await checkpoints.if_due()
        await checkpoints.delivered()
        assert all(e.acks == 1 for e in many)
        assert emitter.flushes == 3

    run(main)


def test_the_timer_ends_a_checkpoint_that_traffic_stopped_before(policy: Policy) -> None:
    async def main() -> None:
        h = Harness(policy)
        events = await h.transactions([tx(1, customer_on(0))])
        await h.loop.tick()
        assert events[0].acks == 0
        h.mono.advance(200)
        await h.loop.tick()
        await h.loop.checkpoints.delivered()
        assert h.acked_once(events)

    run(main)


def test_close_acks_everything_once_even_with_a_checkpoint_in_flight(policy: Policy) -> None:
    async def main() -> None:
        h = Harness(policy)
        h.background.gate.clear()
        h.mono.advance(200)
        in_flight = await h.transactions([tx(1, customer_on(0))])
        await settle()
        assert h.loop.checkpoints.flushing() and h.background.in_flight == 1
        held = await h.transactions([tx(2, customer_on(1))])
        labels = await h.labels([fraud_label(tx(0, customer_on(0)))])
        assert [e.increfs for e in labels] == [1]
        assert [e.acks for e in in_flight + held + labels] == [0, 0, 0]

        closing = asyncio.ensure_future(h.loop.close())
        await settle()
        # close waits for the checkpoint in flight: one delivery at a time
        assert not closing.done() and h.emitter.flushes == 0
        h.background.gate.set()
        await closing
        assert h.emitter.flushes == 2 and h.background.most_in_flight == 1
        assert h.acked_once(in_flight + held + labels)

    run(main)


def test_dead_letters_go_with_the_checkpoint_and_their_record_is_acked_after_it(
    policy: Policy,
) -> None:
    """A record with nothing valid in it is held like the others: acknowledged only after the
    checkpoint that delivers its dead letter (a crash before then reads it again), and never
    a checkpoint of its own (a stream of bad records costs one delivery per checkpoint)."""

    async def main() -> None:
        h = Harness(policy)
        earlier = await h.transactions([tx(1, customer_on(0))])
        assert earlier[0].acks == 0
        good = tx(2, customer_on(1))
        records = [
            *h.tx_records([good]),
            h.record("transactions", 0, customer_on(0).encode(), GARBAGE),
        ]
        events = [h.event("good"), h.event("garbage")]
        await h.loop.on_transactions(records, events)
        [letter] = h.emitter.on("transactions-dlq")
        assert letter.partition is None and letter.key == customer_on(0).encode()
        assert h.metric("fraud_dead_letters_total", reason="decode_error") == 1
        assert [d.transaction_id for d in h.emitter.decisions()] == ["tx-1", "tx-2"]
        assert h.emitter.flushes == 0  # not delivered at once
        assert [e.acks for e in [*earlier, *events]] == [0, 0, 0]
        assert events[1].increfs == 1
        h.mono.advance(250)  # the checkpoint is due by time
        await h.loop.tick()
        await h.loop.checkpoints.delivered()
        assert h.emitter.flushes == 1
        assert h.acked_once([*earlier, *events])
        assert h.journal.index(("flush", "")) < h.journal.index(("ack", "garbage"))
        assert h.emitter.commits[-1][("transactions", 0)] == 2  # past the garbage record
        assert h.loop.checkpoints.unacked == []

    run(main)


# --- pause and resume ---------------------------------------------------------------------------


def test_overfull_partitions_are_paused_until_they_drain(policy: Policy) -> None:
    async def main() -> None:
        h = Harness(policy, SETTINGS.with_overrides(align_max_held=2))
        h.consumer.highs[("transactions", 1)] = 10
        h.consumer.starts[("transactions", 1)] = 0
        ahead = customer_on(0)
        await h.transactions([tx(1, ahead), tx(2, ahead)])
        assert h.consumer.paused == set()
        await h.transactions([tx(3, ahead)])
        assert h.consumer.paused == {("transactions", 0)}
        assert h.loop.paused == {("transactions", 0)}

        h.consumer.highs[("transactions", 1)] = 0  # partition 1 turned out empty
        h.consumer.starts[("transactions", 1)] = 0
        await h.loop.tick()
        assert h.consumer.paused == set() and h.loop.paused == set()
        assert [d.transaction_id for d in h.emitter.decisions()] == ["tx-1", "tx-2", "tx-3"]

    run(main)


# --- labels ---------------------------------------------------------------------------------------


def test_labels_still_streaming_in_reach_the_decision_in_line(policy: Policy) -> None:
    """A labels backlog read slowly (a starved consumer: a label every 10 s of wall clock,
    far past label_wait_ms): the transaction is held, not waited for inside the agent, and
    decided once every label up to its time is applied, with the terminal's risk from all."""

    async def main() -> None:
        h = Harness(policy)
        n = 31
        history = [
            tx(i, customer_on(i % 2, i // 2), "T1", T - 7 * DAY_MS - (n - i) * 10 * 60_000)
            for i in range(n)
        ]
        await h.transactions(history)  # no labels written yet: decided without waiting
        assert len(h.emitter.decisions()) == n
        label_partition = partition_for("T1", P)
        labels_tp = ("labels", label_partition)
        h.consumer.highs[labels_tp] = n  # now the backlog of labels, not fetched yet
        h.consumer.starts[labels_tp] = 0
        h.consumer.fetch_positions[labels_tp] = 0

        held = await h.transactions([tx(n, customer_on(0, 20), "T1")])
        assert len(h.emitter.decisions()) == n  # returned at once, holding it
        label_events = []
        for i, past in enumerate(history):
            assert len(h.emitter.decisions()) == n, f"decided before label {i}"
            h.mono.advance(10_000)
            await h.loop.tick()
            h.consumer.fetch_positions[labels_tp] = i + 1
            label_events += await h.labels([fraud_label(past)])

        decision = h.emitter.decisions()[-1]
        assert decision.transaction_id == f"tx-{n}"
        assert decision.features["terminal_nb_tx_1d"] == n
        assert decision.features["terminal_risk_1d"] == 1.0
        assert list(decision.incomplete) == []
        assert h.metric("fraud_incomplete_decisions_total", input="labels") == 0
        assert h.metric("fraud_labels_applied_total") == n

        # the labels and the transaction are held for the checkpoint
        assert all(e.increfs == 1 for e in label_events + held)
        h.mono.advance(250)
        await h.loop.tick()
        await h.loop.checkpoints.delivered()
        assert h.acked_once(label_events + held)

    run(main)


def test_labels_that_will_not_come_end_the_wait_and_the_decision_says_so(
    policy: Policy,
) -> None:
    """Nothing left unread, yet a label is missing (the last offset is a transaction marker):
    the transaction is decided ``label_wait_ms`` after the last label applied, flagged in
    ``Decision.incomplete`` and counted."""

    async def main() -> None:
        h = Harness(policy)
        history = [tx(i, customer_on(0, i), "T1", T - 7 * DAY_MS - HOUR_MS) for i in range(2)]
        await h.transactions(history)
        labels_tp = ("labels", partition_for("T1", P))
        h.consumer.highs[labels_tp] = 2
        h.consumer.starts[labels_tp] = 0
        h.consumer.fetch_positions[labels_tp] = 2  # fetched to the end, offset 1 a marker

        await h.transactions([tx(9, customer_on(1), "T1")])
        h.mono.advance(100)
        await h.labels([fraud_label(history[0])])
        h.mono.advance(249)
        await h.loop.tick()
        assert len(h.emitter.decisions()) == 2  # 349 ms since the wait's start, 249 since
        h.mono.advance(2)  # past label_wait_ms since the last label applied
        await h.loop.tick()
        decision = h.emitter.decisions()[-1]
        assert decision.transaction_id == "tx-9"
        assert decision.features["terminal_risk_1d"] == 0.5
        assert list(decision.incomplete) == [INCOMPLETE_LABELS]
        assert h.metric("fraud_incomplete_decisions_total", input="labels") == 1

    run(main)


def test_labels_unread_in_kafka_are_waited_for_on_the_hop_too(policy: Policy) -> None:
    """Two-stage: the terminal agent holds a repartition record while its labels are unread,
    returns at once, and decides it when they are applied."""

    async def main() -> None:
        h = Harness(policy, SETTINGS.with_overrides(single_stage=False))
        past = tx(1, customer_on(0), "T1", T - 7 * DAY_MS - HOUR_MS)
        await h.transactions([past])
        first = h.hop_records()  # with the marks-only record to the other partition
        await h.loop.on_repartitioned(first, [h.event(f"hop-0-{r.offset}") for r in first])
        assert len(h.emitter.decisions()) == 1
        labels_tp = ("labels", partition_for("T1", P))
        h.consumer.highs[labels_tp] = 1
        h.consumer.starts[labels_tp] = 0
        h.consumer.fetch_positions[labels_tp] = 0
        h.emitter.sent.clear()
        events = await h.transactions([tx(2, customer_on(1), "T1")])
        [record] = h.hop_records(items_only=True)
        hop_event = h.event("hop-1")
        await h.loop.on_repartitioned([record], [hop_event])
        h.mono.advance(3_600_000)
        await h.loop.tick()
        assert h.emitter.decisions() == []  # held, however long
        q = partition_for("T1", P)
        assert h.loop.consumed.offsets()[(REPARTITION, q)] == record.offset  # not past it
        h.consumer.fetch_positions[labels_tp] = 1
        # the receiver reads the senders' latest marks (they renew a caught-up mark's lease)
        heartbeats = [r for r in h.hop_records() if not EnrichedBatch.FromString(r.value).items]
        await h.loop.on_repartitioned(heartbeats, [h.event() for _ in heartbeats])
        await h.labels([fraud_label(past)])
        [decision] = h.emitter.decisions()
        assert decision.features["terminal_risk_1d"] == 1.0
        assert list(decision.incomplete) == []
        h.mono.advance(1_000)
        await h.loop.tick()
        await h.loop.checkpoints.delivered()
        assert h.acked_once([hop_event, *events])

    run(main)


def test_hop_rows_past_the_label_watermark_wait_even_when_the_first_row_is_within_it(
    policy: Policy,
) -> None:
    """The first pooled row is within the labels applied, a later one past them while labels
    are unread in Kafka: only the first is decided (both were, when the check looked at the
    first row only: seen after a restart as terminal risks decided without their labels)."""

    async def main() -> None:
        h = Harness(policy, SETTINGS.with_overrides(single_stage=False))
        labels_tp = ("labels", partition_for("T1", P))
        h.consumer.highs[labels_tp] = 2  # two labels in Kafka, the second not fetched yet
        h.consumer.starts[labels_tp] = 0
        h.consumer.fetch_positions[labels_tp] = 1
        await h.labels([fraud_label(tx(8, customer_on(1), "T1", T - 10 * DAY_MS))])
        within = tx(1, customer_on(0), "T1", T - 4 * DAY_MS)  # the watermark is T - 3 days
        past = tx(2, customer_on(0), "T1", T)
        await h.transactions([within, past])
        records = h.hop_records()
        await h.loop.on_repartitioned(records, [h.event(f"hop-{r.offset}") for r in records])
        assert [d.transaction_id for d in h.emitter.decisions()] == ["tx-1"]
        h.consumer.fetch_positions[labels_tp] = 2
        await h.labels([fraud_label(tx(9, customer_on(1), "T1", T - 6 * DAY_MS))])
        assert [d.transaction_id for d in h.emitter.decisions()] == ["tx-1", "tx-2"]
        assert list(h.emitter.decisions()[1].incomplete) == []

    run(main)


def test_caught_up_marks_read_long_after_they_were_sent_hold_the_hop_rows_back(
    policy: Policy,
) -> None:
    """Marks read late (their transaction committed late, or the reader was held back behind
    another sender's open transaction) say nothing of now: the rows wait until fresh marks
    come. Read as fresh, a whole-cluster restart's 35 s-old caught-up marks had the terminal
    stage decide one customer partition's rows before another's older ones."""

    async def main() -> None:
        h = Harness(policy, SETTINGS.with_overrides(single_stage=False))
        await h.transactions([tx(1, customer_on(0), "T1", T - 7 * DAY_MS - HOUR_MS)])
        late = h.hop_records(age_s=30.0)
        await h.loop.on_repartitioned(late, [h.event(f"late-{r.offset}") for r in late])
        assert h.emitter.decisions() == []
        h.mono.advance(1_000)
        await h.loop.tick()  # the senders' heartbeats
        fresh = [r for r in h.hop_records() if not EnrichedBatch.FromString(r.value).items]
        await h.loop.on_repartitioned(fresh, [h.event() for _ in fresh])
        assert [d.transaction_id for d in h.emitter.decisions()] == ["tx-1"]

    run(main)


# --- the hop across workers ---------------------------------------------------------------------


def hop_batch(txs: Sequence[Transaction], marks: Mapping[int, int]) -> bytes:
    """A repartition record as another worker's customer stage sends it."""
    items = [
        EnrichedTransaction(transaction=t, customer_features=[0.0] * len(CUSTOMER_STAGE_FEATURES))
        for t in txs
    ]
    return EnrichedBatch(items=items, marks=encode_marks(marks)).SerializeToString()


class HopFeed:
    """Hop records of one partition, at consecutive offsets, fed to a harness's terminal agent."""

    def __init__(self, q: int) -> None:
        self.q = q
        self.values: list[bytes] = []

    def add(self, txs: Sequence[Transaction], marks: Mapping[int, int]) -> None:
        self.values.append(hop_batch(txs, marks))

    async def feed(self, h: Harness, start: int = 0) -> list[FakeEvent]:
        records = [
            RawRecord(None, v, REPARTITION, self.q, offset, T, ENRICHED_BATCH)
            for offset, v in enumerate(self.values)
            if offset >= start
        ]
        events = [h.event(f"hop-{r.offset}") for r in records]
        await h.loop.on_repartitioned(records, events)
        return events


def two_senders(q_terminal: str) -> tuple[HopFeed, Transaction, Transaction]:
    """Customer partition 0's worker is a week ahead of partition 1's: its record of a
    transaction at ``T`` comes first, then the other's at ``T - 7 days - 1 hour``, which the
    first one's terminal window (t - 8 days, t - 7 days] must count."""
    q = partition_for(q_terminal, P)
    ahead = tx(1, customer_on(0), q_terminal, T)
    behind = tx(2, customer_on(1), q_terminal, T - 7 * DAY_MS - HOUR_MS)
    feed = HopFeed(q)
    feed.add([ahead], {0: T})
    feed.add([behind], {1: behind.event_time_ms})
    return feed, ahead, behind


def test_hop_rows_are_decided_in_event_time_order_across_senders(policy: Policy) -> None:
    async def main() -> None:
        h = Harness(policy, SETTINGS.with_overrides(single_stage=False))
        feed, ahead, behind = two_senders("T1")
        feed.add([], {1: T})  # partition 1's worker catches up
        events = await feed.feed(h)
        decided = {d.transaction_id: d for d in h.emitter.decisions()}
        assert list(decided) == [behind.transaction_id, ahead.transaction_id]
        assert decided[ahead.transaction_id].features["terminal_nb_tx_1d"] == 1.0
        await h.loop.tick()
        await h.loop.checkpoints.delivered()
        assert h.acked_once(events)

    run(main)


def test_a_record_decided_past_an_undecided_one_is_not_decided_again(policy: Policy) -> None:
    """The committed offset stops at the oldest record not decided; the records decided
    after it are in the stored progress, and a re-read (a restart, a new owner) skips them."""

    async def main() -> None:
        settings = SETTINGS.with_overrides(single_stage=False)
        h = Harness(policy, settings)
        feed, ahead, behind = two_senders("T1")
        await feed.feed(h)
        assert [d.transaction_id for d in h.emitter.decisions()] == [behind.transaction_id]
        h.mono.advance(1_000)
        await h.loop.tick()
        await h.loop.checkpoints.delivered()
        assert h.emitter.commits[-1][(REPARTITION, feed.q)] == 0  # the ahead record's offset
        # a new owner on the same state, reading from the committed offset
        again = Harness(policy, settings)
        again.terminals.store = h.terminals.store
        feed.add([], {1: T})
        await feed.feed(again, start=0)
        assert [d.transaction_id for d in again.emitter.decisions()] == [ahead.transaction_id]
        [decision] = again.emitter.decisions()
        assert decision.features["terminal_nb_tx_1d"] == 1.0

    run(main)


def test_nothing_is_decided_into_the_transaction_after_a_revocation(policy: Policy) -> None:
    """A hop batch that reaches the terminal agent while the revocation's delivery is in
    flight is not decided: its decisions would be committed after the revocation without the
    offsets that cover them, and the partition's next owner would decide it again."""

    async def main() -> None:
        h = Harness(policy, SETTINGS.with_overrides(single_stage=False))
        feed, _, _ = two_senders("T1")
        feed.add([], {1: T})  # everything in it may be decided at once
        h.background.gate.clear()
        revoking = asyncio.ensure_future(h.loop.on_revoked())
        await settle()
        assert h.background.in_flight == 1  # the revocation's delivery
        agent = asyncio.ensure_future(feed.feed(h))
        await settle()
        h.background.gate.set()
        await revoking
        await agent
        assert h.emitter.decisions() == []

    run(main)


@pytest.mark.parametrize("how", ["revoked", "stopped"])
def test_a_sender_that_loses_its_partitions_says_they_are_not_caught_up(
    policy: Policy, how: str
) -> None:
    """Its last marks, in its last transaction, are finite: receivers wait for the next
    owner instead of going on as if nothing more could come from them."""

    async def main() -> None:
        h = Harness(policy, SETTINGS.with_overrides(single_stage=False))
        await h.transactions([tx(1, customer_on(0)), tx(2, customer_on(1))])
        first = [EnrichedBatch.FromString(s.value) for s in h.emitter.on(REPARTITION)]
        assert any(m.event_time_ms == END_TIME for b in first for m in b.marks)  # caught up
        h.emitter.sent.clear()
        if how == "stopped":
            h.consumer.assigned = set()  # Faust may have let go of the assignment by then
        await (h.loop.on_revoked() if how == "revoked" else h.loop.close())
        last = {s.partition: EnrichedBatch.FromString(s.value) for s in h.emitter.on(REPARTITION)}
        assert sorted(last) == list(range(P))
        for batch in last.values():
            assert not batch.items
            assert {m.partition: m.event_time_ms for m in batch.marks} == {0: T - 1, 1: T - 1}
        sends = [i for i, entry in enumerate(h.journal) if entry == ("send", REPARTITION)]
        flushes = [i for i, entry in enumerate(h.journal) if entry == ("flush", "")]
        assert sends[-1] < flushes[-1]  # in the last delivery

    run(main)


def test_no_caught_up_mark_follows_a_stopping_workers_last_marks(policy: Policy) -> None:
    """The timer ticking while the stop delivers must not add a heartbeat (END_TIME) after
    the last marks to the last transaction: a receiver reading it again would go on as if the
    stopped worker's partitions were caught up."""

    async def main() -> None:
        h = Harness(policy, SETTINGS.with_overrides(single_stage=False))
        await h.transactions([tx(1, customer_on(0)), tx(2, customer_on(1))])
        h.emitter.sent.clear()
        h.background.gate.clear()
        stopping = asyncio.ensure_future(h.loop.close())
        await settle()
        h.mono.advance(5_000)  # every heartbeat is due
        ticking = asyncio.ensure_future(h.loop.tick())
        await settle()
        h.background.gate.set()
        await stopping
        await ticking
        flushed = max(i for i, entry in enumerate(h.journal) if entry == ("flush", ""))
        before = [s for s in h.emitter.on(REPARTITION)][
            : sum(1 for entry in h.journal[:flushed] if entry == ("send", REPARTITION))
        ]
        marks = [m.event_time_ms for s in before for m in EnrichedBatch.FromString(s.value).marks]
        assert marks and END_TIME not in marks

    run(main)
