"""Delivery of the worker's output and acknowledgement of its input.

An input event is acknowledged only once everything it caused (decisions, alerts, dead
letters, repartitioned records, state changes on the changelogs) is delivered. On the
repartition hop (and with dead letters) that is at the end of each batch. In line, decisions
are sent the moment they are made, but the batches' state goes to the changelogs and their
input is acknowledged once per ``checkpoint_s`` or ``CHECKPOINT_MAX_EVENTS`` events (a
"checkpoint"): a key written several times in between is sent once. A checkpoint is delivered
in the background while the next batches are processed; one delivery at a time.

With exactly-once, a delivery is a Kafka transaction that also commits ``Consumed``'s offsets
(``fraud.worker.emitter.TransactionalEmitter``); the acknowledgements then only keep Faust's
bookkeeping, and Faust's own offset commits are off (``fraud.worker.transport``). With
at-least-once, Faust commits the acknowledged offsets after the delivery.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Protocol

from fraud.metrics import WorkerMetrics
from fraud.worker.partitions import TopicPartition

log = logging.getLogger("fraud.worker")

# A checkpoint also starts once this many in-line events wait for one.
CHECKPOINT_MAX_EVENTS = 100_000

# The highest delivered offset per partition of the messages sent with ``track_offset``.
Offsets = dict[TopicPartition, int]
# The next offset to consume per input partition, as a commit stores it.
NextOffsets = Mapping[TopicPartition, int]
# Runs a blocking flush without blocking the event loop (a worker thread in the worker).
FlushRunner = Callable[[Callable[[], Offsets]], Awaitable[Offsets]]


class Emitter(Protocol):
    """The output producer (``fraud.worker.emitter``: ``KafkaEmitter`` for at-least-once,
    ``TransactionalEmitter`` for exactly-once)."""

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        track_offset: bool = False,
    ) -> None: ...

    def hold_sends(self) -> None:
        """A delivery starts: what is sent from now on belongs to the next one."""
        ...

    def release_sends(self) -> None:
        """The delivery ended; sends go out again."""
        ...

    def deliver(self, consumed: NextOffsets) -> Offsets:
        """Deliver everything sent before ``hold_sends`` (blocking, raise if anything failed),
        with ``consumed`` as the input's committed offsets where the emitter commits them;
        the offsets of the tracked messages delivered since the previous delivery."""
        ...

    def abandon(self) -> None:
        """A delivery failed and the worker stops: undo what can be undone."""
        ...

    def close(self) -> None:
        """The worker stops after its last delivery: nothing sent from now on counts."""
        ...


class Changelog(Protocol):
    """A state table's changelog (``fraud.worker.table_store.FaustTableStore``)."""

    def send_changelog(self) -> int:
        """Queue the state changed since the last call on the emitter; how many keys."""
        ...

    def on_changelog_offsets(self, offsets: Offsets) -> None: ...


class Ackable(Protocol):
    def ack(self) -> object: ...


class Consumed:
    """The offset a commit may store for each input partition: the next one after the records
    the worker has handled (their outputs and state changes are queued on the emitter), but
    never past the oldest record it still holds for later (``oldest_held``: the aligner)."""

    def __init__(
        self, oldest_held: Callable[[TopicPartition], int | None] = lambda tp: None
    ) -> None:
        self.oldest_held = oldest_held
        self._next: dict[TopicPartition, int] = {}

    def handled(self, tp: TopicPartition, offset: int) -> None:
        if offset + 1 > self._next.get(tp, -1):
            self._next[tp] = offset + 1

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        """Partitions no longer assigned: their next owner commits them."""
        for tp in tps:
            self._next.pop(tp, None)

    def offsets(self) -> dict[TopicPartition, int]:
        out: dict[TopicPartition, int] = {}
        for tp, nxt in self._next.items():
            held = self.oldest_held(tp)
            out[tp] = nxt if held is None else min(nxt, held)
        return out


class DeliveryFailed(RuntimeError):
    """An earlier delivery failed: the worker is stopping, and delivers nothing more."""


class Delivery:
    """Send the changed state, deliver in the background (one delivery at a time), and pass
    the delivered offsets on to whoever tracks them."""

    def __init__(
        self,
        emitter: Emitter,
        changelogs: Sequence[Changelog],
        metrics: WorkerMetrics,
        in_background: FlushRunner,
        on_delivered: Callable[[Offsets], None],
        consumed: Consumed | None = None,
        before_changelogs: Callable[[], None] = lambda: None,
        stuck_after_s: float | None = None,
    ) -> None:
        """``before_changelogs`` puts what else belongs to the state of the delivery's
        records in the tables (the worker's hop progress) just before they are sent."""
        self.emitter = emitter
        self.changelogs = changelogs
        self.metrics = metrics
        self.in_background = in_background
        self.on_delivered = on_delivered
        self.consumed = consumed or Consumed()
        self.before_changelogs = before_changelogs
        # A delivery still running after this long fails the worker (it exits, and its
        # restart fences the transaction): seen after a whole-cluster restart, librdkafka's
        # send_offsets_to_transaction blocked for minutes past its own timeout, and the
        # worker decided nothing while it stayed in its group.
        self.stuck_after_s = stuck_after_s
        self.failed: BaseException | None = None
        self.closed = False
        self._lock = asyncio.Lock()

    def send_changelogs(self) -> None:
        """Queue each table's changed state since the last call on its changelog."""
        self.before_changelogs()
        self.metrics.changelog_sent.inc(sum(c.send_changelog() for c in self.changelogs))

    async def deliver(self) -> None:
        """Deliver what is queued without blocking the event loop: the other agents go on
        while the broker acknowledges. (Flushing in the loop's own thread saved GIL hand-offs
        at 500 tx/s but measured worse at 1,000 tx/s: p50 58 ms against 38 ms.)"""
        async with self._lock:
            if self.failed is not None:
                raise DeliveryFailed("an earlier delivery failed") from self.failed
            if self.closed:
                raise DeliveryFailed("the worker is stopping: its last delivery is done")
            # No await between these three: the state, the outputs and the offsets of the
            # delivery are those of the same records.
            self.send_changelogs()
            consumed = self.consumed.offsets()
            self.emitter.hold_sends()
            running = asyncio.ensure_future(
                self.in_background(functools.partial(self.emitter.deliver, consumed))
            )
            try:
                offsets = await asyncio.wait_for(asyncio.shield(running), self.stuck_after_s)
            except TimeoutError as exc:
                self.failed = DeliveryFailed(
                    f"a delivery ran for more than {self.stuck_after_s:.0f} s: the worker stops"
                )
                raise self.failed from exc
            except asyncio.CancelledError:
                # The agent is cancelled (the worker stops) while the commit goes on in its
                # thread: let it end, and count it, before the stop delivers the rest.
                await self._settle(running)
                raise
            except Exception as exc:
                self._fail(exc)
                raise
            self.emitter.release_sends()
            self._delivered(offsets)

    async def _settle(self, running: asyncio.Future[Offsets]) -> None:
        try:
            offsets = await running
        except Exception as exc:
            self._fail(exc)
            return
        self.emitter.release_sends()
        self._delivered(offsets)

    async def close(self) -> None:
        """No delivery after this one: wait for the one running (a delivery the agents started
        runs in its thread: the emitter must not be closed under it), then close the emitter."""
        async with self._lock:
            self.closed = True
            self.emitter.close()

    def _fail(self, exc: BaseException) -> None:
        self.failed = exc
        self.emitter.abandon()

    def _delivered(self, offsets: Offsets) -> None:
        self.on_delivered(offsets)
        for changelog in self.changelogs:
            changelog.on_changelog_offsets(offsets)


class Checkpoints:
    """The events waiting for a checkpoint, and the one checkpoint in flight."""

    def __init__(
        self,
        delivery: Delivery,
        clock: Callable[[], float],
        interval_s: float,
        max_events: int = CHECKPOINT_MAX_EVENTS,
    ) -> None:
        self.delivery = delivery
        self.clock = clock
        self.interval_s = interval_s
        self.max_events = max_events
        # events decided in line, and labels applied, since the last checkpoint
        self.unacked: list[Ackable] = []
        self.in_flight: list[Ackable] = []  # events of the checkpoint being flushed
        self._delivering: list[asyncio.Future[None]] = []
        self.last_at = clock()
        self.closed = False  # the worker stops: close() makes the last delivery

    def hold(self, events: Sequence[Ackable]) -> None:
        """Acknowledge ``events`` at the next checkpoint."""
        self.unacked.extend(events)

    def due(self) -> bool:
        return bool(self.unacked) and (
            len(self.unacked) >= self.max_events or self.clock() - self.last_at >= self.interval_s
        )

    def flushing(self) -> bool:
        """A checkpoint is in flight."""
        return bool(self._delivering) and not self._delivering[-1].done()

    async def delivered(self) -> None:
        """Wait for the checkpoint in flight; raises its failure (the agent then stops)."""
        if self._delivering:
            await self._delivering.pop()

    async def if_due(self) -> None:
        """Once the previous checkpoint is delivered, send the changed state and flush in the
        background, then acknowledge the events held for it."""
        if self.closed or not self.due():
            return
        await self.delivered()
        if self.closed:
            return
        self.in_flight[:] = self.unacked
        self.unacked.clear()
        self.last_at = self.clock()
        self._delivering.append(asyncio.ensure_future(self._checkpoint_then_ack()))

    async def _checkpoint_then_ack(self) -> None:
        await self.delivery.deliver()
        # Cleared here, not by the waiter: close() may have acknowledged them meanwhile, and a
        # second ack would release a TransactionBatch record whose other items are still held.
        for event in self.in_flight:
            event.ack()
        self.in_flight.clear()

    async def deliver_then_ack(self, events: Sequence[Ackable]) -> None:
        """Deliver now, with the state of every event held so far, and acknowledge them all
        and ``events`` (after ``close``: nothing, they are consumed again)."""
        if self.closed:
            return
        await self.delivered()
        if self.closed:
            return
        events = [*self.unacked, *events]
        self.unacked.clear()
        await self.delivery.deliver()
        for event in events:
            event.ack()

    async def close(self) -> None:
        """Deliver everything queued and acknowledge every event held or in flight; after a
        failed delivery, abandon what is queued (nothing of it counts) instead. The agents run
        on until the app stops, but start no delivery after this one: what they decide now is
        consumed again from the offsets this delivery commits."""
        self.closed = True
        try:
            await self.delivered()
            await self.delivery.deliver()
        except Exception as exc:  # the worker is stopping: say so, don't mask the stop
            log.error("the last checkpoint was not delivered: %s", exc)
            self.delivery.emitter.abandon()
            return
        finally:
            # What the agents send from now on must not hold an open transaction either: it
            # would keep every read-committed reader of its partitions waiting for the
            # transaction timeout.
            await self.delivery.close()
        for event in [*self.in_flight, *self.unacked]:
            event.ack()
        self.in_flight.clear()
        self.unacked.clear()
