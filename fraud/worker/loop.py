"""The worker's loop: what its agents and timer do with each batch, apart from Faust.

    transactions --on_transactions--> aligner --release--> waiting for labels --> customer
        stage --> terminal stage in line, when single_stage()           --> decisions, alerts
        --> else the repartition hop --on_repartitioned--> waiting for labels --> terminal stage
    labels --on_labels--> terminal state and label watermarks, then what waited on them

Nothing waits inside an agent: what may not be decided yet (its labels are unread) is held
here, and decided when the labels are applied or the timer ticks. An agent that waited would
stop Faust's conductor once its queue filled, and with it the label agent it waited for.

The consumer, the emitter and the changelogs are behind the Protocols of
``fraud.worker.partitions`` and ``fraud.worker.checkpoint``; time comes from an injected
monotonic clock (the stages keep their own wall clock). ``fraud/worker/app.py`` wires this to
Faust's agents and timers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from fraud.contracts.dead_letter import dead_letter_record
from fraud.contracts.partitioning import (
    ALERT,
    CONTRACT_HEADER,
    DECISION,
    ENRICHED_BATCH,
    group_by_partition,
    partition_for,
    type_headers,
)
from fraud.contracts.records import RawRecord
from fraud.contracts.units import NO_TIME
from fraud.metrics import WorkerMetrics
from fraud.scoring.batch import Enriched
from fraud.scoring.customer_stage import CustomerStage
from fraud.scoring.terminal_stage import TerminalResult, TerminalStage
from fraud.settings import Settings, Topics
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.enriched_pb2 import EnrichedBatch, EnrichedTransaction, SourceMark
from fraud.v1.transaction_pb2 import Transaction
from fraud.worker.alignment import EventTimeAligner, Position
from fraud.worker.checkpoint import (
    Ackable,
    Changelog,
    Checkpoints,
    Consumed,
    Delivery,
    Emitter,
    FlushRunner,
)
from fraud.worker.hop_pool import (
    PROGRESS_KEY,
    HopPool,
    Taken,
    decode_progress,
    encode_progress,
)
from fraud.worker.partitions import (
    ConsumerView,
    Positions,
    RepartitionHop,
    TopicPartition,
    by_terminal_topic,
)
from fraud.worker.source_marks import (
    HopMarks,
    MarkSender,
    decode_marks,
    encode_marks,
    sender_marks,
)
from fraud.worker.watermarks import LabelWatermarks, Readiness

log = logging.getLogger("fraud.worker")

# Marks go to every hop partition at least this often, so that a receiver hears from an idle
# sender (and a restarted receiver from every sender); a receiver takes a caught-up mark for
# MARK_FREE_FOR_S after it reads it (fraud.worker.source_marks).
MARK_HEARTBEAT_S = 0.5
MARK_FREE_FOR_S = 3 * MARK_HEARTBEAT_S
# A caught-up mark in a record older than this when read is ignored (a commit under load takes
# seconds; a record read 35 s late made a stopped sender's partitions look caught up).
MARK_MAX_AGE_S = 5.0
# A delivery running this many transaction timeouts is stuck (fraud.worker.checkpoint). A
# call blocked in librdkafka gives its producer up after about one and a half
# (fraud.worker.emitter.bounded), and a commit is retried while the cluster is away: with 4,
# a whole-cluster restart under load (down about a minute) stopped both workers.
DELIVERY_STUCK_FACTOR = 20


class HeldMessage(Protocol):
    def incref(self) -> None: ...


class Event(Ackable, Protocol):
    """A consumed message: acknowledged once, after ``message.incref()`` holds it past the
    acknowledgement of its batch."""

    @property
    def message(self) -> HeldMessage: ...


# What the aligner holds per transaction: the transaction, its record, its index in the record
# (a TransactionBatch record holds several) and the record's event.
Held = tuple[Transaction, RawRecord, int, Event]


@dataclass(frozen=True)
class Waiting:
    """A released transaction waiting for its labels (in line): its terminal's partition, and
    whether the alignment released it early."""

    held: Held
    partition: int
    early: bool


class Outputs:
    """Decisions, alerts and dead letters, queued on the emitter and counted; each record names
    its type in the ``fraud.contract`` header (``fraud.contracts.partitioning``)."""

    DECISION_HEADERS = type_headers(DECISION)
    ALERT_HEADERS = type_headers(ALERT)

    def __init__(self, emitter: Emitter, metrics: WorkerMetrics, names: Topics) -> None:
        self.emitter = emitter
        self.metrics = metrics
        self.names = names

    def dead(self, letters: Sequence[DeadLetter]) -> None:
        self.metrics.record_dead_letters(letters)
        for letter in letters:
            log.warning(
                "dead letter %s:%d@%d %s: %s",
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.reason,
                letter.detail,
            )
            record = dead_letter_record(letter)
            self.emitter.send(
                self.names.dead_letters, record.key, record.value, headers=record.headers
            )

    def decided(self, result: TerminalResult, dead: Sequence[DeadLetter]) -> None:
        """Queue a terminal-stage result's decisions, alerts and dead letters."""
        self.metrics.record_actions(result.action_counts)
        self.metrics.record_latencies(result.decided_at_ms, result.event_times, result.ingested)
        self.metrics.record_alerts(result.alerts)
        self.metrics.record_incomplete(result.incomplete)
        decisions, headers = self.names.decisions, self.DECISION_HEADERS
        for key, value in zip(result.keys, result.encoded, strict=True):
            self.emitter.send(decisions, key, value, headers=headers)
        for alert in result.alerts:
            self.emitter.send(
                self.names.alerts,
                alert.decision.customer_id.encode(),
                alert.SerializeToString(),
                headers=self.ALERT_HEADERS,
            )
        self.dead([*dead, *result.dead_letters])


class WorkerLoop:
    def __init__(
        self,
        settings: Settings,
        customers: CustomerStage,
        terminals: TerminalStage,
        consumer: ConsumerView,
        emitter: Emitter,
        changelogs: Sequence[Changelog],
        metrics: WorkerMetrics,
        *,
        clock: Callable[[], float],
        in_background: FlushRunner,
    ) -> None:
        names = settings.topic_names
        self.partitions = settings.partitions
        self.transactions = names.transactions
        self.labels = names.labels
        self.repartition = by_terminal_topic(settings)
        self.customers = customers
        self.terminals = terminals
        self.emitter = emitter
        self.metrics = metrics
        self.consumer = consumer
        self.positions = Positions(consumer)
        self.hop = RepartitionHop(
            self.positions,
            topic=self.repartition,
            transactions=self.transactions,
            labels=self.labels,
            partitions=settings.partitions,
            enabled=settings.single_stage,
        )
        self.consumed = Consumed(self._oldest_unhandled)
        self.delivery = Delivery(
            emitter, changelogs, metrics, in_background, self.hop.on_delivered, self.consumed,
            before_changelogs=self.store_hop_progress,
            stuck_after_s=DELIVERY_STUCK_FACTOR * settings.transaction_timeout_ms / 1000,
        )  # fmt: skip
        self.checkpoints = Checkpoints(self.delivery, clock, settings.checkpoint_s)
        self.outputs = Outputs(emitter, metrics, names)
        self.aligner: EventTimeAligner[Held] = EventTimeAligner(
            settings.align_slack_ms, settings.align_idle_ms / 1000, clock, settings.align_max_held
        )
        self.watermarks = LabelWatermarks(
            lambda p: self.positions.of(self.labels, p), settings.label_wait_ms / 1000, clock
        )
        self.max_held = settings.align_max_held
        # Cross-worker event time on the hop (fraud.worker.source_marks): what this worker's
        # customer partitions have sent, and what each hop partition heard from every one.
        self.mark_sender = MarkSender(clock, MARK_HEARTBEAT_S, settings.checkpoint_s)
        self.hop_marks = HopMarks(settings.partitions, clock, MARK_FREE_FOR_S, MARK_MAX_AGE_S)
        self.clock = clock
        self._reported_at = clock()
        # Released, waiting for labels before the customer stage (in line), in decision
        # order; and how many per customer partition.
        self.waiting: deque[Waiting] = deque()
        self.waiting_on: Counter[int] = Counter()
        # Repartition records, decided in event-time order per partition once the marks and
        # labels allow (fraud.worker.hop_pool), their rows at most this far out of order.
        self.hop_pool: HopPool[Event] = HopPool()
        self.hop_ahead_ms = min(terminals.config.delay_ms, terminals.config.allowed_lateness_ms)
        self._progress_changed: set[int] = set()  # hop partitions whose progress to store
        self._owned_customer: set[int] = set()  # customer partitions of the last marks
        self.paused: set[TopicPartition] = set()  # paused until what they hold drains
        self._lock = asyncio.Lock()  # one release, hop decision or checkpoint start at a time

    def _oldest_unhandled(self, tp: TopicPartition) -> int | None:
        topic, partition = tp
        if topic == self.repartition:
            return self.hop_pool.oldest(partition)
        if topic != self.transactions:
            return None
        offsets = [
            o
            for o in (
                self.aligner.oldest_offset(partition),
                self._oldest_waiting(partition),
            )
            if o is not None
        ]
        return min(offsets) if offsets else None

    def _oldest_waiting(self, partition: int) -> int | None:
        if not self.waiting_on[partition]:
            return None
        for waiting in self.waiting:  # each partition's items are in offset order
            rec = waiting.held[1]
            if rec.partition == partition:
                return rec.offset
        return None

    async def on_transactions(self, records: Sequence[RawRecord], events: Sequence[Event]) -> None:
        """The customer agent's batch: hold each valid transaction in the aligner, then release
        what it may. Invalid ones become dead letters, delivered at once."""
        event_of = {id(rec): event for rec, event in zip(records, events, strict=True)}
        dead: list[DeadLetter] = []
        parsed = self.customers.parse(records, dead)
        for tx, rec, index in zip(parsed.txs, parsed.recs, parsed.indexes, strict=True):
            event = event_of[id(rec)]
            # Held until released: take_events' own ack then leaves it unacknowledged (a
            # TransactionBatch record counts once per transaction).
            event.message.incref()
            self.aligner.add(rec.partition, rec.offset, tx.event_time_ms, (tx, rec, index, event))
        valid = {id(rec) for rec in parsed.recs}
        refused = [event_of[id(rec)] for rec in records if id(rec) not in valid]
        for event in refused:
            # Nothing valid in it: acknowledged after the checkpoint that delivers its dead
            # letters, like the rest.
            event.message.incref()
        for rec in records:  # held in the aligner, or dead-lettered below
            self.consumed.handled((rec.topic, rec.partition), rec.offset)
        self.outputs.dead(dead)
        self.checkpoints.hold(refused)
        await self.release()

    async def release(self) -> None:
        """Take what the alignment releases; enrich and pass on (or decide in line) what may
        be decided, and acknowledge it once its outputs are delivered."""
        async with self._lock:
            released = self.aligner.release(self.positions.assigned(self.transactions))
            exact = self.aligner.exact_limit
            for held in released:
                tx, rec = held[0], held[1]
                part = partition_for(tx.terminal_id, self.partitions)
                self.waiting.append(Waiting(held, part, tx.event_time_ms > exact))
                self.waiting_on[rec.partition] += 1
            in_line = self.hop.single_stage()
            labels_early: list[bool] = []
            if in_line:
                n, labels_early = self.watermarks.ready_prefix(
                    (w.partition, w.held[0].event_time_ms) for w in self.waiting
                )
            else:
                n = len(self.waiting)  # the terminal stage waits for the labels
            items = [self.waiting.popleft() for _ in range(n)]
            for w in items:
                self.waiting_on[w.held[1].partition] -= 1
            marks = {} if in_line else self._marks()
            sent_to: set[int] = set()
            if items:
                sent_to = self._enrich(items, in_line, labels_early, marks)
            marks_only = [] if in_line else self._send_stale_marks(sent_to, marks)
            if items or marks_only:
                events = [w.held[3] for w in items]
                if in_line:
                    self.checkpoints.hold(events)
                else:
                    # The repartition hop: deliver now, for the terminal stage to read it.
                    await self.checkpoints.deliver_then_ack(events)
            await self.checkpoints.if_due()
            self._pause_overfull()

    def _enrich(
        self,
        items: Sequence[Waiting],
        in_line: bool,
        labels_early: list[bool],
        marks: dict[int, int],
    ) -> set[int]:
        """The customer stage on ``items``, then the terminal stage in line or the repartition
        hop (with this worker's source ``marks``); the hop partitions sent to."""
        started = time.perf_counter()
        result = self.customers.process_parsed(
            [w.held[0] for w in items], [w.held[1] for w in items], [w.held[2] for w in items]
        )
        self.metrics.record_batch("customer", len(items), time.perf_counter() - started)
        if any(w.early for w in items):
            result.columns.incomplete_alignment = [w.early for w in items]
        if in_line:
            self._decide(result.columns, [w.partition for w in items], labels_early)
            return set()
        enriched = result.enriched
        self.metrics.repartitioned.inc(len(enriched))
        sent_to: set[int] = set()
        for partition, group in group_by_partition(
            enriched, [e.transaction.terminal_id for e in enriched], self.partitions
        ):
            self._send_hop(partition, group, marks)
            sent_to.add(partition)
        return sent_to

    def _marks(self) -> dict[int, int]:
        owned = self.positions.assigned(self.transactions)
        self._owned_customer = set(owned)
        return sender_marks(self.aligner, owned)

    def _send_hop(
        self, partition: int, group: Sequence[EnrichedTransaction], marks: dict[int, int]
    ) -> None:
        batch = EnrichedBatch(
            items=group, marks=encode_marks(self.mark_sender.for_partition(partition, marks))
        )
        self.emitter.send(
            self.repartition,
            None,
            batch.SerializeToString(),
            partition=partition,
            headers=[(CONTRACT_HEADER, ENRICHED_BATCH)],
            track_offset=True,
        )

    def _send_stale_marks(self, sent_to: set[int], marks: dict[int, int]) -> list[int]:
        """Marks-only batches to the hop partitions whose marks are stale; which."""
        if not marks:  # no customer partition owned: nothing to say
            return []
        stale = self.mark_sender.stale(
            marks, [q for q in range(self.partitions) if q not in sent_to]
        )
        for q in stale:
            self._send_hop(q, [], marks)
        return stale

    def _pause_overfull(self) -> None:
        """Pause the partitions whose held transactions passed ``align_max_held`` (in the
        aligner, waiting in line, or waiting on the hop) until they drain."""
        full = {(self.transactions, p) for p in self.aligner.overfull()}
        if len(self.waiting) > self.max_held:
            full.update((self.transactions, p) for p in self.positions.assigned(self.transactions))
        full.update(
            (self.repartition, q)
            for q, n in self.hop_pool.rows_by_partition().items()
            if n > self.max_held
        )
        if full == self.paused:
            return
        if full - self.paused:
            log.info("pausing partitions %s until they drain", sorted(full - self.paused))
        self.consumer.pause_partitions(full - self.paused)
        self.consumer.resume_partitions(self.paused - full)
        self.paused = full

    def _decide(
        self,
        columns: Enriched,
        parts: Sequence[int],
        labels_early: Sequence[bool],
    ) -> None:
        """Decide and queue the output (the caller delivers it)."""
        started = time.perf_counter()
        result = self.terminals.process_enriched(columns, parts, labels_early)
        self.metrics.record_batch("terminal", len(columns), time.perf_counter() - started)
        self.outputs.decided(result, [])

    async def on_labels(self, records: Sequence[RawRecord], events: Sequence[Event]) -> None:
        """The label agent's batch: apply the labels to the terminal state, advance the
        watermarks, and decide what waited on them."""
        started = time.perf_counter()
        result = self.terminals.apply_labels(records)
        self.metrics.record_batch("labels", len(records), time.perf_counter() - started)
        self.metrics.record_labels_applied(result.labels_applied)
        self.outputs.dead(result.dead_letters)
        # Their state goes to the changelog, and they are acknowledged, at the next
        # checkpoint, never waited for here: a flush waits for every decision queued before it
        # (80-320 ms measured on Kafka at replay speed), and the transactions waiting on the
        # next labels would wait for it too. A crash before the ack re-applies them; applying
        # a label is idempotent.
        for rec, time_ms in zip(records, result.label_times, strict=True):
            self.watermarks.advance(rec.partition, time_ms, rec.offset)
            self.consumed.handled((rec.topic, rec.partition), rec.offset)
        for event in events:
            event.message.incref()  # held past take_events' own ack, as in on_transactions
        self.checkpoints.hold(events)
        await self._decide_waiting()

    async def _decide_waiting(self) -> None:
        if self.waiting or self.aligner.held():
            await self.release()
        if self.hop_pool.partitions():
            await self._decide_hop()

    async def on_repartitioned(self, records: Sequence[RawRecord], events: Sequence[Event]) -> None:
        """The terminal agent's batch from the repartition hop: pool each record's rows, and
        decide what may be decided."""
        finished: list[Event] = []
        for rec, event in zip(records, events, strict=True):
            q = rec.partition
            event.message.incref()  # held past take_events' own ack, as in on_transactions
            marks: list[Sequence[SourceMark]] = []
            columns, _, dead = self.terminals.decode([rec], marks)
            age_s = self.positions.wall() - rec.timestamp_ms / 1000
            for found in marks:
                self.hop_marks.observe(q, decode_marks(found), age_s)
            self.outputs.dead(dead)
            if not self.hop_pool.loaded(q):
                stored = self.terminals.store.get_many(q, [PROGRESS_KEY])[0]
                self.hop_pool.load(q, decode_progress(stored))
            self.consumed.handled((rec.topic, q), rec.offset)
            if self.hop_pool.add(q, rec.offset, event, columns).done:
                finished.append(event)  # marks only, or decided before (stored progress)
                self._drain(q)
        self.checkpoints.hold(finished)
        await self._decide_hop()

    async def _decide_hop(self) -> None:
        """Decide the pooled rows of each hop partition that every customer partition's marks
        and the labels allow, in event-time order."""
        async with self._lock:
            pieces: list[Enriched] = []
            parts: list[int] = []
            labels_early: list[bool] = []
            finished: list[Event] = []
            for q in self.hop_pool.partitions():
                taken = self._take_hop(q)
                if taken is None:
                    continue
                rows, early = taken
                pieces.append(rows.columns)
                parts += [q] * len(rows.times)
                labels_early += early
                finished += [record.event for record in rows.finished]
            if pieces:
                self._decide(Enriched.concat(pieces), parts, labels_early)
            for q in set(parts):
                self._drain(q)
            self.checkpoints.hold(finished)
            await self.checkpoints.if_due()
            self._pause_overfull()

    def _take_hop(self, q: int) -> tuple[Taken[Event], list[bool]] | None:
        """The rows of ``q`` that may be decided now, and which of them are decided before
        every label up to their time was applied."""
        first = self.hop_pool.next_time(q)
        limit = self.hop_marks.low(q) + self.hop_ahead_ms
        if first is None or first > limit:
            return None  # a customer partition has not sent up to its time yet
        watermark = self.watermarks.event_time.get(q, NO_TIME)
        early = False
        if limit > watermark:
            # Rows up to the watermark have their labels; the ones past it may be taken only
            # if the labels allow a time past it, whether or not the first row is within it.
            state = self.watermarks.check(q, max(first, watermark + 1))
            if state is Readiness.WAIT:
                limit = min(limit, watermark)
            early = state is Readiness.EARLY
        taken = self.hop_pool.take(q, limit)
        if taken is None:
            return None
        self._progress_changed.add(q)
        return taken, [early and t > watermark for t in taken.times]

    def _drain(self, q: int) -> None:
        """Move ``q``'s processed offset past its fully decided records (their events are
        acknowledged as each is finished, in any order)."""
        for record in self.hop_pool.drained(q):
            self.hop.on_processed(q, record.offset)
        self._progress_changed.add(q)

    def store_hop_progress(self) -> None:
        """Put each changed hop partition's progress in its terminal state (a checkpoint
        starts: it goes with the state and offsets it matches)."""
        for q in self._progress_changed:
            value = encode_progress(self.hop_pool.progress(q))
            self.terminals.store.put_many(q, [(PROGRESS_KEY, value)])
        self._progress_changed.clear()

    async def tick(self) -> None:
        """Release what waited on a partition that has since caught up or gone idle, and end a
        checkpoint that traffic stopped before."""
        await self._decide_waiting()
        if not self.hop.single_stage() and not self._lock.locked():
            await self.release()  # marks to the hop partitions that have not heard them
        if self.checkpoints.due() and not self._lock.locked():
            async with self._lock:
                await self.checkpoints.if_due()
        self._report_held()

    def _report_held(self, every_s: float = 10.0) -> None:
        """Say what is held and why, at most every ``every_s``: a worker that decides nothing
        for a while tells which input it waits for."""
        now = self.clock()
        if now - self._reported_at < every_s:
            return
        self._reported_at = now
        held = self.aligner.held_by_partition()
        hop = self.hop_pool.rows_by_partition()
        if not (held or self.waiting or hop):
            return
        labels = sorted({w.partition for w in list(self.waiting)[:1]} | set(hop))
        log.warning(
            "holding: aligner %s, in line waiting for labels %d (first on labels partition "
            "%s), hop rows %s (lowest source mark per hop partition: %s); label positions "
            "%s; transactions positions %s; not fetched %s",
            held,
            len(self.waiting),
            labels[:1],
            hop,
            {q: self._lowest_mark(q) for q in hop},
            {p: _brief(self.positions.of(self.labels, p)) for p in labels},
            {p: _brief(pos) for p, pos in self.positions.assigned(self.transactions).items()},
            sorted(self.consumer.not_fetched()),
        )

    def _lowest_mark(self, q: int) -> str:
        """Which customer partition holds hop partition ``q`` back, and at what mark."""
        marks = {c: self.hop_marks.mark(q, c) for c in range(self.partitions)}
        c = min(marks, key=marks.__getitem__)
        return f"{c}@{marks[c]}"

    async def on_revoked(self) -> None:
        """Partitions are being revoked (a rebalance): deliver what was handled, with its
        offsets, while this worker is still a member of the generation that owns them; then
        forget everything else. Every partition is consumed again from its committed offset
        after the rebalance (Faust's eager protocol), by this worker or its new owner.

        Under the loop's lock: a release or hop decision that an agent would run while this
        delivery is in flight would send its outputs and state into the next transaction,
        after the revocation, with no offsets (forgotten here): the partitions' new owners
        would decide that input again, and apply it to their state twice."""
        async with self._lock:
            await self._revoke()

    async def _revoke(self) -> None:
        try:
            self._send_last_marks()
            await self.checkpoints.deliver_then_ack([])
        finally:
            self.positions.start_highs.clear()  # read again at the next assignment
            self._owned_customer = set()
            self.aligner.drop(range(self.partitions))
            self.watermarks.forget()
            self.mark_sender.forget()
            self.hop_marks.forget(range(self.partitions))
            self.waiting.clear()
            self.waiting_on.clear()
            self.hop_pool.forget()
            self._progress_changed.clear()
            self.consumed.forget(list(self.consumed.offsets()))
            self.consumer.resume_partitions(self.paused)
            self.paused = set()

    def _send_last_marks(self) -> None:
        """This worker stops owning its customer partitions (a revocation, a stop): tell every
        hop partition their finite marks, so that no receiver goes on taking them for caught
        up while their next owner catches up on what came meanwhile."""
        if self.hop.single_stage():
            return
        # The ones of its last marks: when it stops, Faust may have let go of the assignment.
        owned = set(self.positions.assigned(self.transactions)) | self._owned_customer
        marks = sender_marks(self.aligner, owned, caught_up_free=False)
        if marks:
            for q in range(self.partitions):
                self._send_hop(q, [], marks)

    async def close(self) -> None:
        """Deliver everything queued and acknowledge what it covers, so that the consumer's
        last commit (after this) includes the batches decided since the last checkpoint."""
        async with self._lock:
            # Held to the end: a release after the last marks (the timer's heartbeat) would
            # put END_TIME after them in the last transaction, and a receiver reading it again
            # would take this worker's partitions for caught up while they pile up.
            self._send_last_marks()
            await self.checkpoints.close()


def _brief(pos: Position) -> str:
    """A position in a status line: start, fetched, handed and high watermark."""
    return f"start={pos.start} fetched={pos.fetched} handed={pos.handed} high={pos.highwater}"
