"""Faust's aiokafka transport with a short fetch wait, and its exactly-once variant.

Faust builds its worker consumer with ``fetch_max_wait_ms=1500`` hard-coded. When the stream
buffer fills, Faust pauses partitions and resumes them later; records for a resumed partition
then wait behind a fetch request that the broker may hold for up to that long, which showed up
here as a p99 decision latency of about 1.1 s at 1,000 tx/s. A short wait bounds that stall;
an idle worker polls a little more often in exchange.

With exactly-once (``TransactionalTransport``) the consumer reads committed records only (the
repartition topic and the changelogs are written in transactions, and a checkpoint that was
aborted must never be read or restored), and Faust commits no offsets itself: the worker's
transactions commit them with their outputs (``fraud.worker.emitter.TransactionalEmitter``).
A commit of Faust's own, of the offsets acknowledged after a transaction, could otherwise land
after a later transaction's and move the group's offsets back. After each assignment it starts
from the group's stable committed offsets (``stable_committed``): aiokafka's offset fetch
(OffsetFetch v3) answers with the last offsets committed before a transaction whose markers
are still being written, so a new owner started a checkpoint behind the one the previous owner
had just committed in its revocation, and decided it again.

Both may join the group as a static member (``group_instance_id``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Set
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as KafkaTopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka

from fraud.kafka_config import make_consumer

log = logging.getLogger("fraud.worker")

FETCH_MAX_WAIT_MS = 20


def to_rewind(committed: Mapping[Any, int | None], changelogs: Set[str]) -> list[Any]:
    """The input partitions (not changelogs) with no committed offset past 0: after the seek
    to the committed offsets, they must start again from the beginning of the partition."""
    return [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]


class _ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    isolation_level = "read_uncommitted"

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        consumer._isolation_level = self.isolation_level
        consumer._group_instance_id = getattr(transport, "group_instance_id", None)
        return consumer

    def verify_event_path(self, now: float, tp: Any) -> None:
        """Faust's livelock check (a diagnostic log), for partitions whose fetch position is
        known. Faust reads the position unguarded, and aiokafka asserts it is set: right after an
        assignment or a seek it is not, and under load that assert crashed the consumer, after
        which the worker no longer stopped on SIGTERM (the fault suite's ``sigterm``)."""
        if not position_known(_assignment_of(self._ensure_consumer()), tp):
            return None
        try:
            super().verify_event_path(now, tp)
        except AssertionError:
            return None  # the position was reset in aiokafka's thread since the test above
        return None

    async def seek_to_committed(self) -> Mapping[Any, int]:
        """Seek every assigned partition to the group's committed offset, and one without
        any back to its beginning."""
        return await self.call_thread(self._seek_committed)  # type: ignore[no-any-return]

    async def _seek_committed(self) -> Mapping[Any, int | None]:
        consumer = self._ensure_consumer()
        if not consumer.assignment():
            return {}
        found: Mapping[Any, int | None] = await consumer.seek_to_committed()
        await self._rewind(consumer, found)
        return found

    async def _rewind(self, consumer: Any, committed: Mapping[Any, int | None]) -> None:
        """Faust resumes the input partitions before it seeks them to their committed offsets
        (``Recovery._resume_streams``), and drops what is fetched in between (its flow is
        still suspended). A partition with a committed offset is taken back to it; one with
        none was left where the fetch had got to: its first records, dropped, were never
        decided (seen: 232 records, while the seek waited 4 s for a pending transaction).
        Such a partition starts again from its beginning (``auto_offset_reset``)."""
        rewind = to_rewind(committed, set(self.app.tables.changelog_topics))
        if rewind:
            log.info("no committed offset: %s consumed from the beginning", sorted(rewind))
            await consumer.seek_to_beginning(*rewind)


def app_brokers(app: Any) -> str:
    """The bootstrap servers of a Faust app, as confluent-kafka takes them."""
    return ",".join(f"{url.host}:{url.port}" for url in app.conf.broker)


def stable_committed(
    brokers: str,
    group_id: str,
    tps: Iterable[tuple[str, int]],
    timeout_s: float = 120.0,
    clock: Callable[[], float] = time.monotonic,
    report_every_s: float = 5.0,
) -> dict[tuple[str, int], int | None]:
    """The group's committed offset of each partition (None: none), once no transaction that
    commits offsets for it is pending: librdkafka's read-committed offset fetch asks for stable
    offsets (KIP-447) and is refused while a transaction's markers are not written yet, or a
    stopped producer's transaction is still open (until it is aborted)."""
    consumer = make_consumer(
        brokers,
        **{
            "group.id": group_id,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
        },
    )
    started = reported = clock()
    wanted = [KafkaTopicPartition(t, p) for t, p in tps]
    try:
        while True:
            try:
                found = consumer.committed(wanted, timeout=2.0)
                break
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if not isinstance(error, KafkaError) or error.code() != KafkaError._TIMED_OUT:
                    raise
            now = clock()
            if now - started > timeout_s:
                raise TimeoutError(f"the committed offsets of {group_id} stayed unstable")
            if now - reported >= report_every_s:
                reported = now
                log.warning(
                    "waiting for the committed offsets of %s to be stable (a transaction "
                    "still pending: %.0f s so far)",
                    group_id,
                    now - started,
                )
    finally:
        consumer.close()
    return {
        (str(tp.topic), int(tp.partition)): (int(tp.offset) if tp.offset >= 0 else None)
        for tp in found
    }


class _TransactionalConsumerThread(_ConsumerThread):
    isolation_level = "read_committed"

    async def _commit(self, offsets: Mapping[Any, int]) -> bool:
        return True  # committed by the worker's transactions

    async def seek_to_committed(self) -> Mapping[Any, int]:
        """Seek every assigned partition to the group's stable committed offset."""
        return await self.call_thread(self._seek_to_stable)  # type: ignore[no-any-return]

    async def _seek_to_stable(self) -> Mapping[Any, int | None]:
        consumer = self._ensure_consumer()
        assigned = list(consumer.assignment())
        if not assigned:
            return {}
        found = await asyncio.get_running_loop().run_in_executor(
            None,
            stable_committed,
            app_brokers(self.app),
            str(consumer._group_id),
            [(tp.topic, tp.partition) for tp in assigned],
        )
        out: dict[Any, int | None] = {}
        for tp in assigned:
            offset = found.get((tp.topic, tp.partition))
            out[tp] = offset
            if offset is not None and offset > 0:
                consumer.seek(tp, offset)
        await self._rewind(consumer, out)
        return out


class _Consumer(faust_aiokafka.Consumer):
    thread_class: type[_ConsumerThread] = _ConsumerThread

    def _new_consumer_thread(self) -> _ConsumerThread:
        return self.thread_class(self, loop=self.loop, beacon=self.beacon)

    async def _getmany(self, active_partitions: Any, timeout: float) -> Any:
        """The records of one fetch; and, as it is handed to Faust, per partition the next
        offset after its last data record and the fetch position (past transaction markers),
        with the consumer generation (``handed``, ``fetched``). Taken here, once the fetch is
        back, not read live: aiokafka moves the position before the records reach Faust."""
        records = await super()._getmany(active_partitions=active_partitions, timeout=timeout)
        generation = int(self.app.consumer_generation_id or 0)
        handed: dict[Any, tuple[int, int]] = self.__dict__.setdefault("_handed", {})
        for tp, batch in records.items():
            if batch:
                handed[tp] = (generation, int(batch[-1].offset) + 1)
        fetched: dict[Any, tuple[int, int]] = self.__dict__.setdefault("_fetched", {})
        assignment = _assignment(self)
        for tp in active_partitions or ():
            if position_known(assignment, tp):
                fetched[tp] = (generation, int(assignment.state_value(tp).position))
        return records

    def handed(self, tp: Any, generation: int) -> int | None:
        """The next offset after the last data record of ``tp`` handed to Faust in
        ``generation`` (None: none yet)."""
        return _of_generation(self.__dict__.get("_handed", {}), tp, generation)

    def fetched(self, tp: Any, generation: int) -> int | None:
        """The fetch position of ``tp`` when the last fetch was handed to Faust in
        ``generation`` (None: unknown). With ``handed`` it tells a gap of transaction markers
        (nothing more will come) from records still on their way to an agent."""
        return _of_generation(self.__dict__.get("_fetched", {}), tp, generation)


def _of_generation(values: dict[Any, tuple[int, int]], tp: Any, generation: int) -> int | None:
    got = values.get(tp)
    return got[1] if got is not None and got[0] == generation else None


def _assignment(consumer: Any) -> Any:
    """aiokafka's current assignment (Faust has no accessor for it), or None."""
    return _assignment_of(getattr(getattr(consumer, "_thread", None), "_consumer", None))


def _assignment_of(kafka: Any) -> Any:
    """The current assignment of an aiokafka consumer, or None."""
    subscription = getattr(getattr(kafka, "_subscription", None), "subscription", None)
    return getattr(subscription, "assignment", None)


def position_known(assignment: Any, tp: Any) -> bool:
    """Whether aiokafka knows the fetch position of ``tp`` in ``assignment``."""
    state = assignment.state_value(tp) if assignment is not None else None
    return state is not None and bool(state.has_valid_position)


class _TransactionalConsumer(_Consumer):
    thread_class = _TransactionalConsumerThread


class LowLatencyTransport(faust_aiokafka.Transport):
    Consumer = _Consumer
    # Static group membership (KIP-345) when set: a worker restarted with the same id takes
    # its place in the group at once, with its partitions, instead of the group waiting for
    # the session of the dead member to time out and then rebalancing twice.
    group_instance_id: str | None = None


class TransactionalTransport(LowLatencyTransport):
    Consumer = _TransactionalConsumer
