"""Event-time marks across workers on the repartition hop (pure, no broker)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraud.contracts.units import NO_TIME
from fraud.testing import FakeClock
from fraud.v1.enriched_pb2 import EnrichedBatch
from fraud.worker.alignment import END_TIME, EventTimeAligner, Position
from fraud.worker.source_marks import (
    HopMarks,
    MarkSender,
    decode_marks,
    encode_marks,
    sender_marks,
)

HOUR = 3_600_000


def seconds(clock: FakeClock) -> float:
    return clock.now_ms / 1000


# --- sender_marks -----------------------------------------------------------------------------


def test_sender_marks_follow_the_aligner() -> None:
    clock = FakeClock(0)
    al: EventTimeAligner[str] = EventTimeAligner(HOUR, 5.0, lambda: seconds(clock))
    al.add(0, 0, 1 * HOUR, "a")
    al.add(0, 1, 9 * HOUR, "b")  # held: above the limit
    al.add(1, 0, 3 * HOUR, "c")  # partition 1 has a backlog: the watermark
    al.add(2, 0, 2 * HOUR, "d")  # partition 2 is caught up
    pos = {0: Position(5), 1: Position(7), 2: Position(1), 3: Position(4, start=0)}
    assert al.release(pos) == []  # partition 3 has a backlog and delivered nothing
    assert sender_marks(al, pos) == {
        0: NO_TIME + HOUR,
        1: NO_TIME + HOUR,
        2: NO_TIME + HOUR,
        3: NO_TIME,
    }
    al.add(3, 0, 5 * HOUR, "e")
    assert al.release(pos) == ["a", "d", "c"]  # limit: 3h + 1h
    assert sender_marks(al, pos) == {
        0: 4 * HOUR,  # holds b: everything up to the limit went
        1: 3 * HOUR - 1,  # sent all it received; what comes next is at 3h or later
        2: END_TIME,  # caught up: holds nothing back
        3: 4 * HOUR,  # holds e
    }
    # Fetched to their ends (transaction markers left) and silent for 6 s: 0, 1 and 3 are
    # skipped as idle. The aligner goes on past them, and so do the marks, unless told not to.
    clock.advance(6_000)
    idle = {0: Position(5, fetched=5), 1: Position(7, fetched=7), 2: Position(1)}
    idle[3] = Position(4, fetched=4)
    assert al.release(idle) == ["e", "b"]
    assert sender_marks(al, idle) == dict.fromkeys(idle, END_TIME)
    exact = {0: 9 * HOUR - 1, 1: 3 * HOUR - 1, 2: END_TIME, 3: 5 * HOUR - 1}
    assert sender_marks(al, idle, idle_as_caught_up=False) == exact
    assert sender_marks(al, [1]) == {1: END_TIME}  # only the partitions named
    # a sender's last marks (it stops owning them): none caught up
    last = {0: 9 * HOUR - 1, 1: 3 * HOUR - 1, 2: 2 * HOUR - 1, 3: 5 * HOUR - 1}
    assert sender_marks(al, idle, caught_up_free=False) == last


# --- MarkSender -------------------------------------------------------------------------------


def test_mark_sender_tells_which_partitions_need_a_marks_only_batch() -> None:
    clock = FakeClock(0)
    sender = MarkSender(lambda: seconds(clock), heartbeat_s=1.0)
    marks = {0: 10, 1: 20}
    assert sender.stale(marks, range(3)) == [0, 1, 2]  # never sent to
    assert sender.for_partition(1, marks) == marks
    assert sender.stale(marks, range(3)) == [0, 2]
    for q in (0, 2):
        sender.for_partition(q, marks)
    assert sender.stale(marks, range(3)) == []
    changed = {0: 11, 1: 20}
    assert sender.stale(changed, range(3)) == [0, 1, 2]
    sender.for_partition(0, changed)
    assert sender.stale(changed, [0, 1]) == [1]
    clock.advance(999)
    assert sender.stale(changed, range(3)) == [1, 2]
    clock.advance(1)  # the heartbeat: partition 0 got nothing for 1 s
    assert sender.stale(changed, range(3)) == [0, 1, 2]
    sender.for_partition(0, changed)
    sender.forget()
    assert sender.stale(changed, range(3)) == [0, 1, 2]


def test_mark_sender_can_space_out_changed_marks() -> None:
    clock = FakeClock(0)
    sender = MarkSender(lambda: seconds(clock), heartbeat_s=1.0, min_interval_s=0.1)
    sender.for_partition(0, {0: 1})
    assert sender.stale({0: 2}, [0]) == []
    clock.advance(100)
    assert sender.stale({0: 2}, [0]) == [0]
    assert sender.stale({0: 1}, [0]) == []  # unchanged: only the heartbeat


def test_mark_sender_copies_what_it_records() -> None:
    sender = MarkSender(lambda: 0.0, heartbeat_s=1.0)
    marks = {0: 1}
    sent = sender.for_partition(0, marks)
    marks[0] = 2
    sent[0] = 3
    assert sender.stale({0: 1}, [0]) == []


@pytest.mark.parametrize(("heartbeat_s", "min_interval_s"), [(0.0, 0.0), (1.0, -0.1)])
def test_mark_sender_refuses_bad_configuration(heartbeat_s: float, min_interval_s: float) -> None:
    with pytest.raises(ValueError):
        MarkSender(lambda: 0.0, heartbeat_s, min_interval_s)


# --- HopMarks ---------------------------------------------------------------------------------


def test_receiver_waits_for_every_customer_partition() -> None:
    hop = HopMarks(3)
    assert hop.low(0) == NO_TIME and not hop.ready(0, 0, 10)
    hop.observe(0, {0: 100, 1: 200})
    assert hop.low(0) == NO_TIME  # partition 2 never heard of
    hop.observe(0, {2: 150})
    assert hop.low(0) == 100
    assert hop.ready(0, 110, 10) and not hop.ready(0, 111, 10)


def test_receiver_keeps_the_maximum_per_hop_partition() -> None:
    hop = HopMarks(2)
    hop.observe(0, {0: 100, 1: 100})
    hop.observe(0, {0: 50})  # a new owner restarting from committed offsets: lower
    assert hop.low(0) == 100
    hop.observe(0, {0: 300, 1: 200})
    assert hop.low(0) == 200
    # Marks read on partition 1 say nothing of what is in flight on partition 0.
    hop.observe(1, {0: 1_000, 1: 1_000})
    assert hop.low(0) == 200 and hop.low(1) == 1_000


def test_caught_up_counts_until_a_finite_mark_follows() -> None:
    hop = HopMarks(2)
    hop.observe(0, {0: 100, 1: END_TIME})
    assert hop.low(0) == 100
    hop.observe(0, {0: END_TIME})
    assert hop.low(0) == END_TIME
    # A backlog reached partition 0: caught up no more, its finite marks count again.
    hop.observe(0, {0: 40})
    assert hop.low(0) == 100
    hop.observe(0, {0: 400})
    assert hop.low(0) == 400


def test_caught_up_counts_only_while_its_sender_is_heard_from() -> None:
    """A sender that died is not caught up any more once its last END_TIME is older than
    the lease: its partition is waited for from its last finite mark."""
    clock = FakeClock(0)
    hop = HopMarks(2, lambda: seconds(clock), free_for_s=1.5)
    hop.observe(0, {0: 100, 1: 50})
    hop.observe(0, {1: END_TIME})
    assert hop.low(0) == 100
    clock.advance(1_500)
    assert hop.low(0) == 100  # still within the lease
    clock.advance(1)
    assert hop.low(0) == 50  # silent too long: its last finite mark
    hop.observe(0, {1: END_TIME})  # heard from again
    assert hop.low(0) == 100


def test_receiver_ignores_unknown_partitions_and_forgets_revoked_ones() -> None:
    hop = HopMarks(1)
    hop.observe(0, {0: 5, 1: 1, -1: 1})
    assert hop.low(0) == 5
    hop.observe(1, {0: 7})
    hop.forget([0, 9])
    assert hop.low(0) == NO_TIME and hop.low(1) == 7
    with pytest.raises(ValueError):
        HopMarks(0)


def test_marks_round_trip_through_an_items_empty_batch() -> None:
    marks = {3: END_TIME, 0: NO_TIME, 1: 1_700_000_000_000}
    batch = EnrichedBatch(marks=encode_marks(marks))
    assert [m.partition for m in batch.marks] == [0, 1, 3]
    read = EnrichedBatch.FromString(batch.SerializeToString())
    assert not read.items
    assert decode_marks(read.marks) == marks
    assert decode_marks(encode_marks({})) == {}


# --- two workers, two hop partitions ----------------------------------------------------------

N = 4  # customer partitions
Q = 2  # hop partitions


@dataclass(frozen=True)
class Tx:
    ident: int
    time: int
    c: int  # customer partition
    q: int  # hop partition


Record = tuple[list[Tx], dict[int, int]]  # an EnrichedBatch: items and marks


@dataclass
class Worker:
    """The customer stage of one worker: aligner, marks, and records produced but not yet
    committed (``outbox``: a Kafka transaction in flight, kept in order per hop partition)."""

    aligner: EventTimeAligner[Tx]
    sender: MarkSender
    owned: set[int]
    outbox: dict[int, list[Record]] = field(default_factory=lambda: {q: [] for q in range(Q)})


class Cluster:
    """Two workers feeding the hop, one reader of both hop partitions, and a producer writing
    the transactions in event-time order, all at once (``prefilled``: a backlog already in
    Kafka) or bit by bit among the other steps (live). Each step is chosen by ``rng``."""

    def __init__(self, rng: random.Random, prefilled: bool) -> None:
        self.rng = rng
        time = 0
        self.txs: list[Tx] = []
        for i in range(rng.randrange(1, 60)):
            time += rng.choice((0, 0, 1, 2, 5))
            self.txs.append(Tx(i, time, rng.randrange(N), rng.randrange(Q)))
        self.written = 0  # of self.txs, in order
        self.logs: dict[int, list[Tx]] = {c: [] for c in range(N)}  # the transactions topic
        self.consumed = dict.fromkeys(range(N), 0)  # next offset each owner receives
        self.workers = [self._worker({0, 2}), self._worker({1, 3})]
        self.hop: dict[int, list[Record]] = {q: [] for q in range(Q)}
        self.read = dict.fromkeys(range(Q), 0)
        self.marks = HopMarks(N)
        # The same marks without END_TIME: the finite ones hold whatever is written later.
        self.finite = HopMarks(N)
        self.observed: dict[int, set[int]] = {q: set() for q in range(Q)}
        self.prefilled = prefilled
        if prefilled:
            self.write(len(self.txs))

    def _worker(self, owned: set[int]) -> Worker:
        slack = self.rng.choice((0, 1, 10))
        # idle_s is huge: an idle partition stops holding others back, by design not exact.
        aligner: EventTimeAligner[Tx] = EventTimeAligner(slack, 1e9, lambda: 0.0)
        return Worker(aligner, MarkSender(lambda: 0.0, 1.0), owned)

    def write(self, n: int) -> None:
        for tx in self.txs[self.written : self.written + n]:
            self.logs[tx.c].append(tx)
            self.written += 1

    def release(self, w: Worker, everything: bool = False) -> None:
        """Receive some of each owned partition (or all it can), release, queue the batches
        and the marks."""
        for c in sorted(w.owned):
            log, start = self.logs[c], self.consumed[c]
            take = len(log) - start if everything else self.rng.randrange(len(log) - start + 1)
            for offset in range(start, start + take):
                w.aligner.add(c, offset, log[offset].time, log[offset])
            self.consumed[c] = start + take
        # start: where consumption started, for a partition nothing was received from yet.
        pos = {c: Position(len(self.logs[c]), start=self.consumed[c]) for c in w.owned}
        by_q: dict[int, list[Tx]] = {}
        for tx in w.aligner.release(pos):
            by_q.setdefault(tx.q, []).append(tx)
        marks = sender_marks(w.aligner, w.owned)
        for q, items in by_q.items():
            w.outbox[q].append((items, w.sender.for_partition(q, marks)))
        for q in w.sender.stale(marks, [q for q in range(Q) if q not in by_q]):
            w.outbox[q].append(([], w.sender.for_partition(q, marks)))

    def commit(self, w: Worker, q: int, everything: bool = False) -> None:
        """Part of the worker's records to ``q`` reach the log, in order."""
        n = len(w.outbox[q]) if everything else self.rng.randrange(len(w.outbox[q]) + 1)
        self.hop[q].extend(w.outbox[q][:n])
        del w.outbox[q][:n]

    def read_one(self, q: int) -> bool:
        if self.read[q] == len(self.hop[q]):
            return False
        items, marks = self.hop[q][self.read[q]]
        self.read[q] += 1
        self.observed[q].update(tx.ident for tx in items)
        self.marks.observe(q, marks)
        self.finite.observe(q, {c: w for c, w in marks.items() if w != END_TIME})
        return True

    def hand_over(self, c: int) -> None:
        """Move customer partition ``c`` to the other worker: the old owner commits what it
        sent; the new one starts from the committed offset (the first one held, if any)."""
        old = next(w for w in self.workers if c in w.owned)
        new = next(w for w in self.workers if w is not old)
        for q in range(Q):
            self.commit(old, q, everything=True)
        held = old.aligner.oldest_offset(c)
        if held is not None:
            self.consumed[c] = held
        old.aligner.drop([c])
        old.owned.discard(c)
        new.owned.add(c)

    def quiesce(self) -> None:
        """Every worker releases, commits, and the reader reads everything."""
        for w in self.workers:
            self.release(w)
            for q in range(Q):
                self.commit(w, q, everything=True)
        for q in range(Q):
            while self.read_one(q):
                pass

    def step(self) -> None:
        w = self.rng.choice(self.workers)
        q = self.rng.randrange(Q)
        action = self.rng.randrange(20)
        if action < 4:
            self.write(self.rng.randrange(1, 6))
        elif action < 10:
            self.release(w)
        elif action < 14:
            self.commit(w, q)
        elif action < 18:
            self.read_one(q)
        elif action < 19:
            self.hand_over(self.rng.randrange(N))
        else:
            self.quiesce()
            # Every mark is fresh: END_TIME holds too, of what is written so far.
            self.check(self.marks, self.txs[: self.written])

    def check(self, hop: HopMarks, txs: list[Tx]) -> None:
        """Every transaction of ``txs`` in customer partition c destined to q at or before
        W[q][c] was read on q, so none is scored before one it needs (with any need >= 0)."""
        for q in range(Q):
            for tx in txs:
                if tx.q == q and tx.time <= hop.mark(q, tx.c):
                    assert tx.ident in self.observed[q], (q, tx, hop.mark(q, tx.c))
            low = hop.low(q)
            assert all(tx.ident in self.observed[q] for tx in txs if tx.q == q and tx.time <= low)

    def check_step(self) -> None:
        # Finite marks hold of what is written later too (event time does not go back).
        self.check(self.finite, self.txs)
        if self.prefilled:  # nothing is written later: a caught-up partition is done
            self.check(self.marks, self.txs)

    def drain(self) -> None:
        self.write(len(self.txs))
        for w in self.workers:
            self.release(w, everything=True)  # all caught up: releases all it holds
            assert not w.aligner.held()
            for q in range(Q):
                self.commit(w, q, everything=True)
        for q in range(Q):
            while self.read_one(q):
                self.check_step()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.large_base_example])
@given(rng=st.randoms(use_true_random=False), prefilled=st.booleans())
def test_no_transaction_is_scored_before_older_ones_of_its_hop_partition(
    rng: random.Random, prefilled: bool
) -> None:
    cluster = Cluster(rng, prefilled)
    for _ in range(rng.randrange(300)):
        cluster.step()
        cluster.check_step()
    cluster.drain()
    # Live: once everything is read, nothing waits; each transaction was read once, on its q.
    for q in range(Q):
        assert cluster.marks.low(q) == END_TIME
        assert cluster.observed[q] == {tx.ident for tx in cluster.txs if tx.q == q}


def test_a_caught_up_mark_in_a_record_read_long_after_it_was_sent_counts_for_nothing() -> None:
    hop = HopMarks(2, max_age_s=5.0)
    hop.observe(0, {0: 100, 1: 200})
    hop.observe(0, {0: END_TIME, 1: END_TIME}, age_s=30.0)  # e.g. read behind an open transaction
    assert hop.low(0) == 100
    hop.observe(0, {0: END_TIME}, age_s=0.2)
    assert hop.mark(0, 0) == END_TIME and hop.low(0) == 200
