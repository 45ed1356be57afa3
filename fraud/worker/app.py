"""The Faust app: topics, the two state tables, and the agents and timers of the two stages.

    transactions (key customer) --customers--> {app}-by-terminal (key terminal) --terminals-->
    labels (key terminal) --labels--------------------------------------------^    decisions,
                                                                                   alerts
Everything here moves bytes between Faust and ``fraud.worker.loop.WorkerLoop``, which holds
the worker's state and protocol (alignment, the in-line switch, checkpoints); the logic is
``fraud.scoring`` (``customer_stage``, ``terminal_stage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import queue
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence, Set
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faust
from faust.types import TP

from fraud.broker import TopicSpec, topic_config
from fraud.contracts.partitioning import contract_of
from fraud.contracts.records import RawRecord
from fraud.kafka_config import high_watermarks
from fraud.metrics import WorkerMetrics, worker_metrics
from fraud.scoring.customer_stage import CustomerStage
from fraud.scoring.policy import Policy
from fraud.scoring.terminal_stage import TerminalStage
from fraud.settings import Settings
from fraud.windows.customer import CustomerConfig
from fraud.windows.terminal import TerminalConfig
from fraud.worker import fetch_backoff
from fraud.worker.checkpoint import Offsets
from fraud.worker.emitter import GroupMember, KafkaEmitter, TransactionalEmitter
from fraud.worker.loop import WorkerLoop
from fraud.worker.partitions import TopicPartition, by_terminal_topic
from fraud.worker.recovery import CommittedTableManager
from fraud.worker.table_store import FaustTableStore
from fraud.worker.transport import LowLatencyTransport, TransactionalTransport


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


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


class FaustConsumerView:
    """The ``ConsumerView`` of the app's consumer (which Faust creates when the worker starts)."""

    def __init__(self, app: faust.App) -> None:
        self._app = app

    def assignment(self) -> Set[TopicPartition]:
        assigned: Set[TopicPartition] = self._app.consumer.assignment()
        return assigned

    def highwater(self, tp: TopicPartition) -> int | None:
        high: int | None = self._app.consumer.highwater(TP(*tp))
        return high

    def committed(self, tp: TopicPartition) -> int | None:
        """Faust has no public accessor for it."""
        committed = getattr(self._app.consumer, "_committed_offset", {})
        offset: int | None = committed.get(TP(*tp))
        return offset

    def fetched(self, tp: TopicPartition) -> int | None:
        """The fetch position as of the last fetch handed to Faust, in this generation."""
        return self._of_generation("fetched", tp)

    def handed(self, tp: TopicPartition) -> int | None:
        """The next offset after the last data record handed to Faust in this generation."""
        return self._of_generation("handed", tp)

    def _of_generation(self, name: str, tp: TopicPartition) -> int | None:
        consumer: Any = self._app.consumer
        read = getattr(consumer, name, None)  # fraud.worker.transport's consumer
        if read is None:
            return None
        offset: int | None = read(TP(*tp), int(self._app.consumer_generation_id or 0))
        return offset

    def polled_at(self, tp: TopicPartition) -> float | None:
        """aiokafka's time of the last fetch response for ``tp`` (it has no public accessor
        on Faust's consumer)."""
        consumer: Any = self._app.consumer
        try:
            polled = consumer._thread._ensure_consumer().last_poll_timestamp(TP(*tp))
        except Exception:  # not assigned (any more), or the consumer not started
            return None
        return None if polled is None else float(polled) / 1000

    def member(self) -> GroupMember:
        """This worker's consumer group membership (aiokafka's coordinator holds it)."""
        consumer: Any = self._app.consumer
        coordinator = consumer._thread._ensure_consumer()._coordinator
        instance = coordinator._group_instance_id
        return GroupMember(
            str(coordinator.group_id),
            int(coordinator.generation),
            str(coordinator.member_id),
            None if instance is None else str(instance),
        )

    def not_fetched(self) -> Set[TopicPartition]:
        """The assigned input partitions outside Faust's active set: paused, or their stream
        buffer full (Faust has no public accessor for it; the changelogs are paused after
        recovery, and left out)."""
        consumer: Any = self._app.consumer
        idle = consumer.assignment() - consumer._get_active_partitions()
        changelogs = self._app.tables.changelog_topics
        return {(str(tp.topic), int(tp.partition)) for tp in idle if tp.topic not in changelogs}

    def pause_partitions(self, tps: Iterable[TopicPartition]) -> None:
        self._app.consumer.pause_partitions([TP(*tp) for tp in tps])

    def resume_partitions(self, tps: Iterable[TopicPartition]) -> None:
        """Resume, and fetch each partition again from just after the last record Faust
        handed to a stream.

        A list, not a generator: Faust's resume_partitions reads its argument twice (once for
        the paused set, once for the active set), and a generator is empty the second time:
        the partitions stayed unfetched for good (a handbook-size run stalled).

        The seek: Faust's getmany skips the fetched records of a partition that is paused
        while they are handed out (it checks the live active set), and the consumer's position
        has moved past them; resumed, the partition went on after them. A handbook-size run
        lost 910 TransactionBatch records (455,000 transactions) that way, their offsets
        committed past them."""
        consumer: Any = self._app.consumer
        resumed = [TP(*tp) for tp in tps]
        consumer.resume_partitions(resumed)
        assigned = consumer.assignment()
        for tp in resumed:
            delivered = consumer._read_offset.get(tp)
            if delivered is not None and tp in assigned:  # not while being revoked
                consumer._thread.seek(tp, delivered + 1)


class CurrentGeneration:
    """Keeps the worker's input to the consumer group generation it owns partitions in.

    ``take_events`` yields events it buffered before a rebalance after it: such an event,
    fetched in a generation whose partitions were revoked (Faust stamps
    ``message.generation_id``), belongs to partitions this worker may no longer own, and is
    consumed again from the committed offsets. Handling it would decide it twice, and its
    offset, committed in the new generation, could move a partition of another worker past
    records it has not decided.
    """

    def __init__(self, app: Any) -> None:
        self._app = app  # reads app.consumer_generation_id
        self.revoked_up_to = -1  # the newest generation whose partitions were revoked
        self.dropped = 0

    def revoked(self) -> None:
        self.revoked_up_to = max(self.revoked_up_to, int(self._app.consumer_generation_id))

    def current(self, events: Sequence[Any]) -> list[Any]:
        """The events fetched after the last revocation."""
        newest = self.revoked_up_to
        fresh = [e for e in events if (e.message.generation_id or 0) > newest]
        self.dropped += len(events) - len(fresh)
        return fresh


class FlushThread:
    """Runs the deliveries one at a time in a daemon thread (librdkafka releases the GIL while
    it waits). A daemon, not a ``ThreadPoolExecutor``'s thread, which the interpreter joins at
    exit: a delivery blocked in librdkafka past its own timeout (seen in
    ``send_offsets_to_transaction``) kept a worker that had stopped on it from exiting, so
    nothing restarted it."""

    def __init__(self, name: str = "fraud-flush") -> None:
        self._jobs: queue.SimpleQueue[
            tuple[Callable[[], Offsets], asyncio.AbstractEventLoop, asyncio.Future[Offsets]]
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    async def run(self, flush: Callable[[], Offsets]) -> Offsets:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Offsets] = loop.create_future()
        self._jobs.put((flush, loop, done))
        return await done

    def _serve(self) -> None:
        while True:
            flush, loop, done = self._jobs.get()
            try:
                result: Offsets | BaseException = flush()
            except BaseException as exc:  # handed to the awaiting coroutine
                result = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, done, result)


def _settle(done: asyncio.Future[Offsets], result: Offsets | BaseException) -> None:
    if done.done():  # cancelled meanwhile
        return
    if isinstance(result, BaseException):
        done.set_exception(result)
    else:
        done.set_result(result)


def _faust_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{b.strip()}" for b in settings.brokers.split(",")],
        store="rocksdb://",
        datadir=str(Path(settings.data_dir) / "worker"),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        # Faust's own exactly-once (a transactional producer per partition) is not used: the
        # worker's emitter commits its transactions (fraud.worker.emitter).
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        web_enabled=settings.web_port is not None,
        web_port=settings.web_port or 6066,
        web_bind="127.0.0.1",
        producer_linger_ms=1,
        stream_buffer_maxsize=max(4096, 4 * settings.batch_max),
        broker_commit_every=10_000,
        broker_commit_interval=1.0,
        # A member that stops answering (killed, or stopped: static members do not leave the
        # group) loses its partitions after this long.
        broker_session_timeout=settings.session_timeout_s,
        table_standby_replicas=settings.standby_replicas,
        # The customer stage holds messages unacknowledged while it aligns event time; they
        # are delivered again after a restart or a rebalance, so do not wait for them.
        stream_wait_empty=False,
        # Recovery that ends on a transactional changelog too (its last offset is a marker).
        TableManager=CommittedTableManager,
    )
    fetch_backoff.install()
    transport = TransactionalTransport if settings.exactly_once else LowLatencyTransport
    app.transport = transport(app.conf.broker_consumer, app)
    app.transport.group_instance_id = transactional_id(settings)
    return app


def transactional_id(settings: Settings) -> str:
    """The settings' id, else one per app, host and data dir: stable across restarts of one
    worker (its restart fences and aborts the transaction it left open, and takes its place
    in the consumer group: it is the group instance id too), distinct between workers."""
    if settings.transactional_id:
        return settings.transactional_id
    where = f"{socket.gethostname()}:{Path(settings.data_dir).resolve()}"
    return f"{settings.app_id}-{hashlib.sha256(where.encode()).hexdigest()[:16]}"


def _emitter(settings: Settings, consumer: FaustConsumerView) -> KafkaEmitter:
    if not settings.exactly_once:
        return KafkaEmitter(settings.brokers)
    return TransactionalEmitter(
        settings.brokers,
        transactional_id(settings),
        consumer.member,
        timeout_ms=settings.transaction_timeout_ms,
    )


def _observe_lag_and_tables(
    consumer: FaustConsumerView,
    metrics: WorkerMetrics,
    tables: Sequence[tuple[str, FaustTableStore, str]],
) -> None:
    """Consumer lag (high watermark - committed offset) and the sizes of the ``tables``
    (name, store, topic whose partitions it holds), for /metrics."""
    owned: dict[str, list[int]] = {}
    for tp in consumer.assignment():
        owned.setdefault(tp[0], []).append(tp[1])
        high = consumer.highwater(tp)
        if high is not None:
            metrics.set_lag(tp[0], tp[1], int(high) - int(consumer.committed(tp) or 0))
    for name, store, topic in tables:
        metrics.set_table_size(name, store.estimate_keys(owned.get(topic, [])))


def _table(app: faust.App, settings: Settings, name: str) -> Any:
    return app.Table(
        name,
        key_type=bytes,
        value_type=bytes,
        partitions=settings.partitions,
        # Faust creates the changelog compacted; it keeps the settings' durability too
        extra_topic_configs={"min.insync.replicas": str(settings.min_insync_replicas)},
    )


def _prepare(
    settings: Settings,
    loop: WorkerLoop,
    emitter: KafkaEmitter,
    customer_store: FaustTableStore,
    terminal_store: FaustTableStore,
) -> None:
    """One-time costs before the first transaction: open the RocksDB of every assigned
    partition and fetch the output topics' metadata (measured: about a second of backlog at
    1,000 tx/s when left to the first batches). The input topics' high watermarks are read at
    every assignment, the first one included (``on_assigned``)."""
    names = settings.topic_names
    repartition = by_terminal_topic(settings)
    store_of = {
        names.transactions: customer_store,
        repartition: terminal_store,
        names.labels: terminal_store,
    }
    for topic, partition in loop.consumer.assignment():
        if topic in store_of:
            store_of[topic].open_partition(partition)
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


@dataclass(frozen=True)
class WorkerApp:
    app: faust.App
    # Run before Faust starts: fence this worker's earlier instance (a transaction it left open
    # is aborted at once, instead of holding the changelogs' recovery back until it times out).
    fence: Callable[[], None]
    # Run once partitions are assigned, before the worker says it is ready.
    prepare: Callable[[], None]
    # Deliver whatever the stages queued; run when the worker stops.
    close: Callable[[], Awaitable[None]]
    terminals: TerminalStage


def create_app(
    settings: Settings, policy: Policy, metrics: WorkerMetrics | None = None
) -> WorkerApp:
    """Build the worker app for ``settings``, deciding with ``policy``."""
    metrics = metrics or worker_metrics()
    names = settings.topic_names
    repartition = by_terminal_topic(settings)
    app = _faust_app(settings)
    transactions = _raw_topic(app, names.transactions, settings.partitions)
    by_terminal = _raw_topic(app, repartition, settings.partitions)
    labels = _raw_topic(app, names.labels, settings.partitions)
    consumer = FaustConsumerView(app)
    emitter = _emitter(settings, consumer)
    customer_store, terminal_store = (
        FaustTableStore(_table(app, settings, name), emitter)
        for name in ("customer-state", "terminal-state")
    )
    lateness = settings.allowed_lateness_ms
    customers = CustomerStage(
        customer_store,
        wall_ms,
        CustomerConfig(allowed_lateness_ms=lateness),
        settings.max_future_ms,
        settings.partitions,
    )
    terminals = TerminalStage(
        terminal_store, wall_ms, policy, TerminalConfig(allowed_lateness_ms=lateness)
    )
    loop = WorkerLoop(
        settings,
        customers,
        terminals,
        consumer,
        emitter,
        [customer_store, terminal_store],
        metrics,
        clock=time.monotonic,
        in_background=FlushThread().run,
    )

    generation = CurrentGeneration(app)

    @app.agent(transactions, name="customers")
    async def customer_agent(stream: Any) -> AsyncIterator[None]:
        async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            if events := generation.current(batch):
                await loop.on_transactions(_records(events), events)
            yield None

    @app.agent(labels, name="labels")
    async def label_agent(stream: Any) -> AsyncIterator[None]:
        async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            if events := generation.current(batch):
                await loop.on_labels(_records(events), events)
            yield None

    @app.agent(by_terminal, name="terminals")
    async def terminal_agent(stream: Any) -> AsyncIterator[None]:
        async for batch in stream.take_events(settings.batch_max, within=settings.batch_within_s):
            if events := generation.current(batch):
                await loop.on_repartitioned(_records(events), events)
            yield None

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(sender: Any, revoked: Set[TP], **kwargs: Any) -> None:
        if revoked:
            generation.revoked()
            await loop.on_revoked()

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: Set[TP], **kwargs: Any) -> None:
        # What the consumer has not fetched from yet is known by these: read again at each
        # assignment (the ones read at start say nothing of partitions that filled since).
        highs = await asyncio.get_running_loop().run_in_executor(
            None, high_watermarks, settings.brokers, [names.transactions, names.labels, repartition]
        )
        loop.positions.start_highs.update(highs)

    @app.timer(interval=settings.batch_within_s * 10)  # type: ignore[untyped-decorator]
    async def release_held() -> None:
        await loop.tick()

    stores = (
        ("customer-state", customer_store, names.transactions),
        ("terminal-state", terminal_store, repartition),
    )

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]
    async def observe_lag_and_tables() -> None:
        _observe_lag_and_tables(consumer, metrics, stores)

    prepare = functools.partial(_prepare, settings, loop, emitter, customer_store, terminal_store)
    fence = emitter.start if isinstance(emitter, TransactionalEmitter) else lambda: None
    return WorkerApp(app, fence, prepare, loop.close, terminals)
