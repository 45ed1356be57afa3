"""Faust's table recovery, finishing on changelogs written in Kafka transactions.

Recovery reads a changelog partition until it has received the record at the high watermark
minus one. A changelog written in transactions ends with a commit (or abort) marker, a control
record that consumers never receive, so that offset never comes and recovery never ends:
measured, a worker restarted on an empty data dir waited forever with one record "remaining"
in every partition. Faust's own check for this runs only with its own exactly-once guarantee,
which the worker does not use (``fraud.worker.emitter``).

Here the last offset Faust waits for is that of the last record a reader receives, read from
the end of each changelog partition before recovery starts, once every transaction open on it
has ended (``committed_ends``: Faust's own end offset is the last stable offset, which stops at
the first record of a transaction still open). A local partition that claims more
of its changelog than the changelog holds (``ConsistencyError`` in Faust: the topic was
recreated, or a broker lost acknowledged records) is rebuilt from the changelog instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from faust.tables import TableManager
from faust.tables.recovery import Recovery
from faust.types import TP

from fraud.kafka_config import make_consumer, watermark_offsets
from fraud.worker.transport import app_brokers

log = logging.getLogger("fraud.worker")


def committed_ends(
    brokers: str,
    tps: Iterable[tuple[str, int]],
    timeout_s: float = 120.0,
    clock: Callable[[], float] = time.monotonic,
) -> dict[tuple[str, int], int]:
    """The offset of the last committed record of each changelog partition (-1: none).

    First waits until every transaction open on a partition when this is called has ended
    (its last stable offset has reached its high watermark): a producer that stopped inside a
    transaction (a worker stopped, killed or removed from the group) holds back, until it is
    aborted (``transaction.timeout.ms``) or its successor fences it, every record committed
    after its first one; a recovery that took the last stable offset for the end would lose
    them, or throw away a local state that holds them. Then reads the end of each partition
    from its high watermark back: a tail of commit and abort markers and aborted records has
    no record a reader would receive."""
    # librdkafka's watermark query answers with the last stable offset under read_committed,
    # its default isolation level, and with the high watermark only under read_uncommitted
    peek = make_consumer(
        brokers, **{"group.id": "fraud-recovery", "isolation.level": "read_uncommitted"}
    )
    reader = make_consumer(
        brokers,
        **{
            "group.id": "fraud-recovery",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "isolation.level": "read_committed",
        },
    )
    try:
        highs = {tp: watermark_offsets(peek, TopicPartition(*tp))[1] for tp in tps}
        _wait_stable(reader, highs, clock() + timeout_s, clock)
        return _last_records(reader, highs, clock() + timeout_s, clock)
    finally:
        peek.close()
        reader.close()


def _wait_stable(
    reader: Any,
    highs: Mapping[tuple[str, int], int],
    deadline: float,
    clock: Callable[[], float],
    report_every_s: float = 5.0,
) -> None:
    """Wait until the last stable offset of every partition reaches ``highs``."""
    started = reported = clock()
    waiting = dict(highs)
    while waiting:
        for tp, high in list(waiting.items()):
            if watermark_offsets(reader, TopicPartition(*tp))[1] >= high:  # read_committed: LSO
                del waiting[tp]
        if not waiting:
            return
        now = clock()
        if now > deadline:
            raise TimeoutError(
                f"transactions open on {sorted(waiting)} for {now - started:.0f} s did not end"
            )
        if now - reported >= report_every_s:
            reported = now
            log.warning(
                "recovery waits for transactions open on %s to end (%.0f s so far; a stopped "
                "producer's is aborted after its transaction timeout)",
                sorted(waiting),
                now - started,
            )
        time.sleep(0.1)


def _last_records(
    reader: Any,
    highs: Mapping[tuple[str, int], int],
    deadline: float,
    clock: Callable[[], float],
) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    back = {tp: 4 for tp, high in highs.items() if high > 0}
    out.update({tp: -1 for tp, high in highs.items() if high <= 0})
    while back:
        starts: dict[tuple[str, int], int] = {}
        lows: dict[tuple[str, int], int] = {}
        for tp, n in back.items():
            lows[tp] = watermark_offsets(reader, TopicPartition(*tp))[0]
            starts[tp] = max(lows[tp], highs[tp] - n)
        reader.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        last: dict[tuple[str, int], int] = {}
        open_tps = set(starts)
        while open_tps:
            if clock() > deadline:
                raise TimeoutError(f"reading the end of {sorted(open_tps)} took too long")
            for message in reader.consume(1000, timeout=0.5):
                tp = (str(message.topic()), int(message.partition() or 0))
                error = message.error()
                if error is not None:
                    if error.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(error)
                    open_tps.discard(tp)
                    continue
                if int(message.offset() or 0) < highs[tp]:
                    last[tp] = max(last.get(tp, -1), int(message.offset() or 0))
        again: dict[tuple[str, int], int] = {}
        for tp, n in back.items():
            if tp in last or starts[tp] <= lows[tp]:
                out[tp] = last.get(tp, -1)
            else:
                again[tp] = n * 8  # only markers and aborted records so far: look further
        back = again
    return out


class _CommittedRecovery(Recovery):
    async def _build_highwaters(
        self, consumer: Any, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        """The last offset of each changelog partition: the last committed record, once every
        transaction open on it has ended (``committed_ends``). Faust's own is the end offset
        its read-committed consumer is told, the last stable offset, which stops at the first
        record of an open transaction; and with transactions, the last offset is a marker."""
        await super()._build_highwaters(consumer, tps, destination, title)
        if not tps:
            return
        found = await asyncio.get_running_loop().run_in_executor(
            None, committed_ends, app_brokers(self.app), [(tp.topic, tp.partition) for tp in tps]
        )
        for tp in tps:
            key = (tp.topic, tp.partition)
            if found.get(key, -1) != destination.get(tp, -1):
                log.info("%s ends at %d (Faust: %d)", tp, found.get(key, -1), destination[tp])
            destination[tp] = found.get(key, -1)

    async def _build_offsets(
        self, consumer: Any, tps: set[TP], destination: Counter[TP], title: str
    ) -> None:
        """Faust's starting offsets; a local partition that claims more of its changelog
        than the changelog holds (the topic was recreated, or lost records) is emptied and
        rebuilt from the changelog, instead of stopping the worker."""
        await super()._build_offsets(consumer, tps, destination, title)
        if title != "active":
            # Faust builds the standby partitions' offsets before their highwaters (the ones
            # at hand are the previous rebalance's: every standby looked ahead and was thrown
            # away); a standby that is really ahead is caught here once it becomes active.
            return
        highs = self.active_highwaters
        for tp in tps:
            have, high = destination.get(tp), highs.get(tp)
            if have is None or high is None or have <= high:
                continue
            log.warning(
                "local state of %s is ahead of its changelog (offset %d > %d): rebuilding it",
                tp,
                have,
                high,
            )
            _empty(self.tp_to_table[tp], tp.partition)
            destination[tp] = -1


def _empty(table: Any, partition: int) -> None:
    db = table.data._db_for_partition(partition)
    for key in list(db.keys()):
        del db[key]


class CommittedTableManager(TableManager):
    """Faust's ``TableManager`` with ``_CommittedRecovery`` (the app's ``TableManager``)."""

    @property
    def recovery(self) -> Recovery:
        if self._recovery is None:
            self._recovery = _CommittedRecovery(self.app, self, beacon=self.beacon, loop=self.loop)
        return self._recovery
