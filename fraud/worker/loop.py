"""The worker's loop: what its agents and timer do with each batch, apart from Faust.

    transactions --on_transactions--> aligner --release--> customer stage
        --> terminal stage in line, when single_stage()                 --> decisions, alerts
        --> else the repartition hop --on_repartitioned--> terminal stage --^
    labels --on_labels--> terminal state and label watermarks

The consumer, the emitter and the changelogs are behind the Protocols of
``fraud.worker.partitions`` and ``fraud.worker.checkpoint``; time comes from an injected
monotonic clock (the stages keep their own wall clock). ``fraud/worker/app.py`` wires this to
Faust's agents and timers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
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
from fraud.v1.enriched_pb2 import EnrichedBatch
from fraud.v1.transaction_pb2 import Transaction
from fraud.worker.alignment import EventTimeAligner
from fraud.worker.checkpoint import (
    Ackable,
    Changelog,
    Checkpoints,
    Consumed,
    Delivery,
    Emitter,
    FlushRunner,
)
from fraud.worker.partitions import (
    ConsumerView,
    Positions,
    RepartitionHop,
    TopicPartition,
    by_terminal_topic,
)
from fraud.worker.watermarks import LabelWatermarks

log = logging.getLogger("fraud.worker")


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
        # Released transactions being processed, oldest offset per partition: with the
        # aligner's, what a commit must not pass.
        self.in_progress: dict[int, int] = {}
        self.consumed = Consumed(self._oldest_unhandled)
        self.delivery = Delivery(
            emitter, changelogs, metrics, in_background, self.hop.on_delivered, self.consumed
        )
        self.checkpoints = Checkpoints(self.delivery, clock, settings.checkpoint_s)
        self.outputs = Outputs(emitter, metrics, names)
        self.aligner: EventTimeAligner[Held] = EventTimeAligner(
            settings.align_slack_ms, settings.align_idle_ms / 1000, clock, settings.align_max_held
        )
        self.watermarks = LabelWatermarks(
            lambda p: self.positions.of(self.labels, p), settings.label_wait_ms / 1000, clock
        )
        self.paused: set[int] = set()  # transactions partitions paused until they drain
        self._lock = asyncio.Lock()  # one release (or checkpoint start) at a time
        # Incremented when partitions are revoked: a batch that was waiting then is dropped
        # (it had no effect yet; its input is consumed again from the committed offsets).
        self.epoch = 0

    def _oldest_unhandled(self, tp: TopicPartition) -> int | None:
        if tp[0] != self.transactions:
            return None
        held = self.aligner.oldest_offset(tp[1])
        busy = self.in_progress.get(tp[1])
        if held is None or busy is None:
            return held if busy is None else busy
        return min(held, busy)

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
        for rec in records:  # held in the aligner, or dead-lettered below
            self.consumed.handled((rec.topic, rec.partition), rec.offset)
        self.outputs.dead(dead)
        await self.release(always_deliver=bool(dead))

    async def release(self, always_deliver: bool) -> None:
        """Enrich and pass on (or decide in line) what the alignment releases, then
        acknowledge it once its outputs are delivered."""
        async with self._lock:
            items = self.aligner.release(self.positions.assigned(self.transactions))
            for _, rec, _, _ in items:
                if rec.offset < self.in_progress.get(rec.partition, rec.offset + 1):
                    self.in_progress[rec.partition] = rec.offset
            try:
                decided = await self._enrich(items) if items else False
            finally:
                self.in_progress.clear()
            if decided is None:
                return  # revoked while waiting: dropped
            events = [event for _, _, _, event in items]
            if decided and not always_deliver:
                self.checkpoints.hold(events)
                await self.checkpoints.if_due()
            elif items or always_deliver:
                # Dead letters or the repartition hop: deliver now, with any earlier state.
                await self.checkpoints.deliver_then_ack(events)
            self._pause_overfull()

    async def _enrich(self, items: Sequence[Held]) -> bool | None:
        """The customer stage on released transactions, then the terminal stage in line (True)
        or the repartition hop (False); None when partitions were revoked while it waited for
        labels (nothing was changed)."""
        in_line = self.hop.single_stage()
        parts: list[int] = []
        if in_line:
            # Waited for before any state changes, so a revocation during the wait leaves
            # nothing half done.
            parts = [partition_for(tx.terminal_id, self.partitions) for tx, _, _, _ in items]
            if not await self._labels_ready([tx for tx, _, _, _ in items], parts):
                return None
        started = time.perf_counter()
        result = self.customers.process_parsed(
            [tx for tx, _, _, _ in items],
            [rec for _, rec, _, _ in items],
            [index for _, _, index, _ in items],
        )
        self.metrics.record_batch("customer", len(items), time.perf_counter() - started)
        if in_line:
            self._decide(result.columns, parts, [])
            return True
        enriched = result.enriched
        self.metrics.repartitioned.inc(len(enriched))
        for partition, group in group_by_partition(
            enriched, [e.transaction.terminal_id for e in enriched], self.partitions
        ):
            self.emitter.send(
                self.repartition,
                None,
                EnrichedBatch(items=group).SerializeToString(),
                partition=partition,
                headers=[(CONTRACT_HEADER, ENRICHED_BATCH)],
                track_offset=True,
            )
        return False

    def _pause_overfull(self) -> None:
        full = self.aligner.overfull()
        if full == self.paused:
            return
        if full - self.paused:
            log.info("pausing customer partitions %s until they drain", sorted(full))
        self.consumer.pause_partitions((self.transactions, p) for p in full - self.paused)
        self.consumer.resume_partitions((self.transactions, p) for p in self.paused - full)
        self.paused.clear()
        self.paused.update(full)

    async def _labels_ready(self, txs: Sequence[Transaction], parts: Sequence[int]) -> bool:
        """Wait for the labels up to these transactions' times; False when partitions were
        revoked meanwhile (the caller then drops the batch)."""
        epoch = self.epoch
        needs: dict[int, int] = {}
        for tx, partition in zip(txs, parts, strict=True):
            t = tx.event_time_ms
            if t > needs.get(partition, NO_TIME):
                needs[partition] = t
        if needs and not await self.watermarks.wait(needs):
            self.metrics.label_wait_timeouts.inc()
        return self.epoch == epoch

    def _decide(self, columns: Enriched, parts: Sequence[int], dead: Sequence[DeadLetter]) -> None:
        """Decide and queue the output (the caller delivers it)."""
        started = time.perf_counter()
        result = self.terminals.process_enriched(columns, parts)
        self.metrics.record_batch("terminal", len(columns), time.perf_counter() - started)
        self.outputs.decided(result, dead)

    def on_labels(self, records: Sequence[RawRecord], events: Sequence[Event]) -> None:
        """The label agent's batch: apply the labels to the terminal state and advance the
        watermarks, so that transactions waiting on them may be scored at once."""
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

    async def on_repartitioned(self, records: Sequence[RawRecord]) -> None:
        """The terminal agent's batch from the repartition hop: decide and deliver (the agent
        then acknowledges the batch)."""
        columns, parts, dead = self.terminals.decode(records)
        if not await self._labels_ready(columns.txs, parts):
            return  # revoked while waiting: consumed again from the committed offsets
        self._decide(columns, parts, dead)
        for rec in records:
            self.consumed.handled((rec.topic, rec.partition), rec.offset)
        await self.delivery.deliver()
        for rec in records:
            self.hop.on_processed(rec.partition, rec.offset)

    async def tick(self) -> None:
        """Release what waited on a partition that has since caught up or gone idle, and end a
        checkpoint that traffic stopped before."""
        if self.aligner.held():
            await self.release(always_deliver=False)
        if self.checkpoints.due() and not self._lock.locked():
            async with self._lock:
                await self.checkpoints.if_due()

    async def on_revoked(self) -> None:
        """Partitions are being revoked (a rebalance): deliver what was handled, with its
        offsets, while this worker is still a member of the generation that owns them; then
        forget everything else. Every partition is consumed again from its committed offset
        after the rebalance (Faust's eager protocol), by this worker or its new owner."""
        try:
            await self.checkpoints.deliver_then_ack([])
        finally:
            self.epoch += 1
            self.aligner.drop(range(self.partitions))
            self.consumed.forget(list(self.consumed.offsets()))
            self.consumer.resume_partitions((self.transactions, p) for p in self.paused)
            self.paused.clear()

    async def close(self) -> None:
        """Deliver everything queued and acknowledge what it covers, so that the consumer's
        last commit (after this) includes the batches decided since the last checkpoint."""
        await self.checkpoints.close()
