"""The Faust app: topics, the two state tables and the agents of the two stages.

    transactions (key customer) --customers--> {app}-by-terminal (key terminal) --terminals-->
    labels (key terminal) --labels--------------------------------------------^    decisions,
                                                                                   alerts
Everything here moves bytes; the logic is ``fraud.scoring.stages``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from fraud.broker import TopicSpec, topic_config
from fraud.contracts.partitioning import (
    CONTRACT_HEADER,
    ENRICHED_BATCH,
    contract_of,
    group_by_partition,
    partition_for,
)
from fraud.contracts.records import RawRecord
from fraud.contracts.wire import dead_letter_headers
from fraud.kafka_config import high_watermarks
from fraud.metrics import WorkerMetrics, worker_metrics
from fraud.scoring.batch import Enriched
from fraud.scoring.customer_stage import CustomerStage
from fraud.scoring.policy import Policy
from fraud.scoring.terminal_stage import TerminalResult, TerminalStage
from fraud.settings import Settings
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.enriched_pb2 import EnrichedBatch
from fraud.v1.transaction_pb2 import Transaction
from fraud.windows.customer import CustomerConfig
from fraud.windows.terminal import TerminalConfig
from fraud.worker import fetch_backoff
from fraud.worker.alignment import EventTimeAligner, Position
from fraud.worker.emitter import KafkaEmitter
from fraud.worker.table_store import FaustTableStore
from fraud.worker.transport import LowLatencyTransport
from fraud.worker.watermarks import LabelWatermarks

log = logging.getLogger("fraud.worker.run")

# A checkpoint also starts once this many in-line transactions wait for one.
CHECKPOINT_MAX_EVENTS = 100_000


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def by_terminal_topic(settings: Settings) -> str:
    return f"{settings.topic_prefix}{settings.app_id}-by-terminal"


def internal_topics(settings: Settings) -> list[TopicSpec]:
    """The repartition topic between the stages (same partitions as the tables)."""
    return [
        TopicSpec(
            by_terminal_topic(settings),
            settings.partitions,
            topic_config(settings),
        )
    ]


def _raw_topic(app: faust.App, name: str, partitions: int | None = None) -> Any:
    return app.topic(
        name,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )


def _records(events: Sequence[Any]) -> list[RawRecord]:
    return [
        RawRecord(
            key=e.message.key,
            value=e.message.value,
            topic=e.message.topic,
            partition=e.message.partition,
            offset=e.message.offset,
            timestamp_ms=int(e.message.timestamp * 1000),
            contract=contract_of(e.message.headers),
        )
        for e in events
    ]


def _committed(app: faust.App) -> Mapping[TP, int | None]:
    """The committed offset of each assigned partition, where its consumption started from (or
    what was committed since). Faust has no public accessor for it."""
    committed: Mapping[TP, int | None] = getattr(app.consumer, "_committed_offset", {})
    return committed


@dataclass(frozen=True)
class WorkerApp:
    app: faust.App
    # Run once partitions are assigned, before the worker says it is ready.
    prepare: Callable[[], None]
    # Deliver whatever the stages queued; run when the worker stops.
    close: Callable[[], None]
    terminals: TerminalStage


def create_app(
    settings: Settings, policy: Policy, metrics: WorkerMetrics | None = None
) -> WorkerApp:
    """Build the worker app for ``settings``, deciding with ``policy``."""
    metrics = metrics or worker_metrics()
    names = settings.topic_names
    repartition = by_terminal_topic(settings)
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.brokers.split(",")],
        store="rocksdb://",
        datadir=str(Path(settings.data_dir) / "worker"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        web_enabled=settings.web_port is not None,
        web_port=settings.web_port or 6066,
        web_bind="127.0.0.1",
        producer_linger_ms=1,
        stream_buffer_maxsize=max(4096, 4 * settings.batch_max),
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        # The customer stage holds messages unacknowledged while it aligns event time; they
        # are delivered again after a restart or a rebalance, so do not wait for them.
        stream_wait_empty=False,
    )
    fetch_backoff.install()
    app.transport = LowLatencyTransport(app.conf.broker_consumer, app)
    transactions = _raw_topic(app, names.transactions, settings.partitions)
    by_terminal = _raw_topic(app, repartition, settings.partitions)
    labels = _raw_topic(app, names.labels, settings.partitions)
    tables = [
        app.Table(
            name,
            key_type=bytes,
            value_type=bytes,
            partitions=settings.partitions,
            # Faust creates the changelog compacted; it keeps the settings' durability too
            extra_topic_configs={"min.insync.replicas": str(settings.min_insync_replicas)},
        )
        for name in ("customer-state", "terminal-state")
    ]
    emitter = KafkaEmitter(settings.brokers)
    customer_store, terminal_store = (FaustTableStore(t, emitter) for t in tables)
    customers = CustomerStage(
        customer_store,
        wall_ms,
        CustomerConfig(allowed_lateness_ms=settings.allowed_lateness_ms),
        settings.max_future_ms,
        settings.partitions,
    )
    terminals = TerminalStage(
        terminal_store,
        wall_ms,
        policy,
        TerminalConfig(allowed_lateness_ms=settings.allowed_lateness_ms),
    )

    # High watermarks read at start, for partitions not fetched from yet: an empty partition is
    # then known to be caught up from the first transaction (else the first batches waited for
    # labels and for the alignment, and took the repartition hop).
    start_highs: dict[TP, int] = {}

    def position(tp: TP) -> Position:
        high = app.consumer.highwater(tp)
        if high is None:
            high = start_highs.get(tp)
        start = _committed(app).get(tp)
        return Position(None if high is None else int(high), None if start is None else int(start))

    def label_position(partition: int) -> Position:
        return position(TP(names.labels, partition))

    watermarks = LabelWatermarks(label_position, settings.label_wait_ms / 1000)
    flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fraud-flush")

    def send_dead(letters: Sequence[DeadLetter]) -> None:
        metrics.record_dead_letters(letters)
        for letter in letters:
            log.warning(
                "dead letter %s:%d@%d %s: %s",
                letter.source_topic,
                letter.source_partition,
                letter.source_offset,
                letter.reason,
                letter.detail,
            )
            emitter.send(
                names.dead_letters,
                letter.key or None,
                letter.SerializeToString(),
                headers=dead_letter_headers(letter),
            )

    def send_changelogs() -> None:
        """Queue each table's changed state since the last call on its changelog."""
        metrics.changelog_sent.inc(
            customer_store.send_changelog() + terminal_store.send_changelog()
        )

    async def deliver() -> None:
        """Deliver before the batch is acknowledged (at-least-once), without blocking the
        event loop: the other agents go on while the broker acknowledges. (Flushing in the
        loop's own thread saved GIL hand-offs at 500 tx/s but measured worse at 1,000 tx/s:
        p50 58 ms against 38 ms.)"""
        send_changelogs()
        offsets = await asyncio.get_running_loop().run_in_executor(flusher, emitter.flush)
        for (topic, partition), offset in offsets.items():
            if topic == repartition:
                hop_sent[partition] = offset
        customer_store.on_changelog_offsets(offsets)
        terminal_store.on_changelog_offsets(offsets)

    aligner: EventTimeAligner[tuple[Transaction, RawRecord, int, Any]] = EventTimeAligner(
        settings.align_slack_ms,
        settings.align_idle_ms / 1000,
        time.monotonic,
        settings.align_max_held,
    )
    align_lock = asyncio.Lock()
    paused: set[int] = set()

    def positions() -> dict[int, Position]:
        return {
            tp.partition: position(tp)
            for tp in app.consumer.assignment()
            if tp.topic == names.transactions
        }

    # The repartition hop, tracked to know when it may be skipped: the next offset the terminal
    # agent has processed on each by-terminal partition, and the offset of the last record this
    # worker sent there (from the emitter's delivery reports).
    hop_processed: dict[int, int] = {}
    hop_sent: dict[int, int] = {}

    def single_stage() -> bool:
        """Run the terminal stage in line, skipping the repartition topic: when this worker owns
        every partition of the transactions, by-terminal and labels topics (so every terminal's
        state is here) and every record on the repartition topic has been processed (so no
        terminal sees its transactions out of order). A rebalance that takes a partition away
        turns the hop back on."""
        if not settings.single_stage:
            return False
        owned: dict[str, set[int]] = {}
        for tp in app.consumer.assignment():
            owned.setdefault(tp.topic, set()).add(tp.partition)
        every = set(range(settings.partitions))
        if any(
            owned.get(t, set()) != every for t in (names.transactions, repartition, names.labels)
        ):
            return False
        for p in every:
            done = hop_processed.get(p)
            if p in hop_sent and (done is None or done <= hop_sent[p]):
                return False
            if not position(TP(repartition, p)).caught_up(done):
                return False
        return True

    def decide(result: TerminalResult, dead: Sequence[DeadLetter]) -> None:
        """Queue a terminal-stage result's decisions, alerts and dead letters."""
        metrics.record_actions(result.action_counts)
        metrics.record_latencies(result.decided_at_ms, result.event_times, result.ingested)
        metrics.record_alerts(result.alerts)
        for key, value in zip(result.keys, result.encoded, strict=True):
            emitter.send(names.decisions, key, value)
        for alert in result.alerts:
            emitter.send(
                names.alerts, alert.decision.customer_id.encode(), alert.SerializeToString()
            )
        send_dead([*dead, *result.dead_letters])

    # In line, decisions are sent the moment they are made, but the batches' state goes to the
    # changelogs and their input is acknowledged once per checkpoint_s ("checkpoints"): a key
    # written several times in between is sent once. A checkpoint is flushed in the
    # background while the next batches are processed; at most one is in flight.
    delivering: list[asyncio.Future[None]] = []
    # events decided in line, and labels applied, since the last checkpoint
    unacked: list[Any] = []
    in_flight: list[Any] = []  # events of the checkpoint being flushed
    last_checkpoint = [time.monotonic()]

    async def deliver_then_ack(events: Sequence[Any]) -> None:
        await deliver()
        for event in events:
            event.ack()

    async def checkpoint_then_ack() -> None:
        await deliver()
        # Cleared here, not by the waiter: close() may have acknowledged them meanwhile, and a
        # second ack would release a TransactionBatch record whose other items are still held.
        for event in in_flight:
            event.ack()
        in_flight.clear()

    async def delivered() -> None:
        """Wait for the delivery in flight; raises its failure (the agent then stops)."""
        if delivering:
            await delivering.pop()

    def checkpoint_due() -> bool:
        return bool(unacked) and (
            len(unacked) >= CHECKPOINT_MAX_EVENTS
            or time.monotonic() - last_checkpoint[0] >= settings.checkpoint_s
        )

    async def checkpoint_if_due() -> None:
        """Once the previous checkpoint is delivered, send the changed state and flush in the
        background, then acknowledge ``unacked``."""
        if not checkpoint_due():
            return
        await delivered()
        in_flight[:] = unacked
        unacked.clear()
        last_checkpoint[0] = time.monotonic()
        delivering.append(asyncio.ensure_future(checkpoint_then_ack()))

    async def release(always_deliver: bool) -> None:
        """Enrich and pass on (or decide in line) what the alignment releases, then
        acknowledge it once its outputs are delivered."""
        async with align_lock:
            items = aligner.release(positions())
            decided = False
            if items:
                started = time.perf_counter()
                result = customers.process_parsed(
                    [tx for tx, _, _, _ in items],
                    [rec for _, rec, _, _ in items],
                    [index for _, _, index, _ in items],
                )
                metrics.record_batch("customer", len(items), time.perf_counter() - started)
                if single_stage():
                    columns = result.columns
                    parts = [
                        partition_for(tx.terminal_id, settings.partitions) for tx in columns.txs
                    ]
                    await terminal_step(columns, parts, [])
                    decided = True
                else:
                    enriched = result.enriched
                    metrics.repartitioned.inc(len(enriched))
                    for partition, group in group_by_partition(
                        enriched, [e.transaction.terminal_id for e in enriched], settings.partitions
                    ):
                        emitter.send(
                            repartition,
                            None,
                            EnrichedBatch(items=group).SerializeToString(),
                            partition=partition,
                            headers=[(CONTRACT_HEADER, ENRICHED_BATCH)],
                            track_offset=True,
                        )
            events = [event for _, _, _, event in items]
            if decided and not always_deliver:
                unacked.extend(events)
                await checkpoint_if_due()
            elif items or always_deliver:
                # Dead letters or the repartition hop: deliver now, with any earlier state.
                await delivered()
                events = [*unacked, *events]
                unacked.clear()
                await deliver_then_ack(events)
            full = aligner.overfull()
            if full != paused:
                if full - paused:
                    log.info("pausing customer partitions %s until they drain", sorted(full))
                app.consumer.pause_partitions(TP(names.transactions, p) for p in full - paused)
                app.consumer.resume_partitions(TP(names.transactions, p) for p in paused - full)
                paused.clear()
                paused.update(full)

    @app.agent(transactions, name="customers")
    async def customer_agent(stream: Any) -> AsyncIterator[None]:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            records = _records(events)
            event_of = {id(rec): event for rec, event in zip(records, events, strict=True)}
            dead: list[DeadLetter] = []
            parsed = customers.parse(records, dead)
            for tx, rec, index in zip(parsed.txs, parsed.recs, parsed.indexes, strict=True):
                event = event_of[id(rec)]
                # Held until released: take_events' own ack then leaves it unacknowledged (a
                # TransactionBatch record counts once per transaction).
                event.message.incref()
                aligner.add(rec.partition, rec.offset, tx.event_time_ms, (tx, rec, index, event))
            send_dead(dead)
            await release(always_deliver=bool(dead))
            yield None

    @app.timer(interval=settings.batch_within_s * 10)  # type: ignore[untyped-decorator]
    async def release_held() -> None:
        """Release what waited on a partition that has since caught up or gone idle, and end a
        checkpoint that traffic stopped before."""
        if aligner.held():
            await release(always_deliver=False)
        if checkpoint_due() and not align_lock.locked():
            async with align_lock:
                await checkpoint_if_due()

    @app.agent(labels, name="labels")
    async def label_agent(stream: Any) -> AsyncIterator[None]:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            records = _records(events)
            started = time.perf_counter()
            result = terminals.apply_labels(records)
            metrics.record_batch("labels", len(records), time.perf_counter() - started)
            metrics.record_labels_applied(result.labels_applied)
            send_dead(result.dead_letters)
            # The labels are in the terminal state now: transactions waiting on them may be
            # scored at once. Their state goes to the changelog, and they are acknowledged, at
            # the next checkpoint, never waited for here: a flush waits for every decision
            # queued before it (80-320 ms measured on Kafka at replay speed), and the
            # transactions waiting on the next labels would wait for it too. A crash before
            # the ack re-applies them; applying a label is idempotent.
            for rec, time_ms in zip(records, result.label_times, strict=True):
                watermarks.advance(rec.partition, time_ms, rec.offset)
            for event in events:
                event.message.incref()  # held past take_events' own ack, as in customer_agent
            unacked.extend(events)
            yield None

    async def terminal_step(
        columns: Enriched, parts: Sequence[int], dead: Sequence[DeadLetter]
    ) -> None:
        """Wait for the labels up to these transactions' times, then decide and queue the
        output (the caller delivers it)."""
        needs: dict[int, int] = {}
        for tx, partition in zip(columns.txs, parts, strict=True):
            t = tx.event_time_ms
            if t > needs.get(partition, -(2**63)):
                needs[partition] = t
        if needs and not await watermarks.wait(needs):
            metrics.label_wait_timeouts.inc()
        started = time.perf_counter()
        result = terminals.process_enriched(columns, parts)
        metrics.record_batch("terminal", len(columns), time.perf_counter() - started)
        decide(result, dead)

    @app.agent(by_terminal, name="terminals")
    async def terminal_agent(stream: Any) -> AsyncIterator[None]:
        async for events in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            records = _records(events)
            await terminal_step(*terminals.decode(records))
            await deliver()
            for rec in records:
                hop_processed[rec.partition] = max(
                    hop_processed.get(rec.partition, 0), rec.offset + 1
                )
            yield None

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def observe_lag_and_tables() -> None:
        """Consumer lag (high watermark - committed offset) and table sizes, for /metrics."""
        committed = _committed(app)
        owned: dict[str, list[int]] = {}
        for tp in app.consumer.assignment():
            owned.setdefault(tp.topic, []).append(tp.partition)
            high = app.consumer.highwater(tp)
            if high is not None:
                metrics.set_lag(tp.topic, tp.partition, int(high) - int(committed.get(tp) or 0))
        for name, store, topic in (
            ("customer-state", customer_store, names.transactions),
            ("terminal-state", terminal_store, repartition),
        ):
            metrics.set_table_size(name, store.estimate_keys(owned.get(topic, [])))

    def prepare() -> None:
        """One-time costs before the first transaction: open the RocksDB of every assigned
        partition and fetch the output topics' metadata (measured: about a second of backlog
        at 1,000 tx/s when left to the first batches)."""
        stores = {
            names.transactions: customer_store,
            repartition: terminal_store,
            names.labels: terminal_store,
        }
        for tp in app.consumer.assignment():
            if tp.topic in stores:
                stores[tp.topic].open_partition(tp.partition)
        for (topic, partition), high in high_watermarks(
            settings.brokers, [names.transactions, names.labels, repartition]
        ).items():
            start_highs[TP(topic, partition)] = high
        emitter.warm(
            [
                names.decisions,
                names.alerts,
                names.dead_letters,
                repartition,
                customer_store.changelog_topic,
                terminal_store.changelog_topic,
            ]
        )

    def close() -> None:
        """Deliver everything queued and acknowledge what it covers, so that the consumer's
        last commit (after this) includes the batches decided since the last checkpoint."""
        send_changelogs()
        emitter.flush()
        for event in [*in_flight, *unacked]:
            event.ack()
        in_flight.clear()
        unacked.clear()

    return WorkerApp(app, prepare, close, terminals)
