"""Output path of the worker: one confluent-kafka producer for decisions, alerts, dead letters,
the repartition topic and the state changelogs.

Faust's producer sends one message at a time through asyncio and measured about a thousand
decisions per second here; librdkafka buffers and batches in C.

Two ways to deliver (``fraud.worker.checkpoint.Delivery`` picks none; the worker's settings do):

* ``KafkaEmitter`` (at-least-once): ``deliver`` flushes; the caller then acknowledges the input,
  and Faust commits its offsets later. A crash in between delivers that input again.
* ``TransactionalEmitter`` (exactly-once): everything sent between two deliveries is one Kafka
  transaction, and ``deliver`` adds the consumed input offsets to it and commits. Outputs,
  state changes and offsets become visible together or not at all; readers use
  ``isolation.level=read_committed``. While a commit is in flight (in a worker thread), sends
  are held in order and go into the next transaction.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from fraud.kafka_config import make_producer, produce

log = logging.getLogger("fraud.worker")

# (topic, partition) -> the next offset to consume, as committed.
NextOffsets = Mapping[tuple[str, int], int]
# How many times a commit that failed with a retriable error is tried again.
COMMIT_ATTEMPTS = 10


class EmitError(RuntimeError):
    """Kafka refused or failed to deliver output of the worker."""


class StuckCall(RuntimeError):
    """A librdkafka call did not return within its own timeout and a grace period."""


# How long past its own timeout a transactional call may run before its producer is given up.
STUCK_GRACE_S = 5.0


def bounded(call: Callable[[], None], timeout_s: float, grace_s: float = STUCK_GRACE_S) -> None:
    """Run ``call`` (a blocking librdkafka call given ``timeout_s``) in a daemon thread and
    wait ``timeout_s + grace_s`` for it; ``StuckCall`` when it is still running then.
    librdkafka's ``send_offsets_to_transaction`` was seen to block for minutes past its
    timeout after the group coordinator's broker restarted (issues #5456, #5511); a thread
    left blocked that way is abandoned with its producer."""
    done = threading.Event()
    failed: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:  # raised in the caller's thread below
            failed.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="fraud-txn-call", daemon=True).start()
    if not done.wait(timeout_s + grace_s):
        waited = timeout_s + grace_s
        raise StuckCall(f"no answer {waited:.0f} s into a call given {timeout_s:.0f} s")
    if failed:
        raise failed[0]


class KafkaEmitter:
    def __init__(self, brokers: str, extra: dict[str, Any] | None = None) -> None:
        conf: dict[str, Any] = {
            "enable.idempotence": True,
            # flush() at the end of each batch sends at once; no linger needed
            "linger.ms": 0,
            "queue.buffering.max.messages": 1_000_000,
            "queue.buffering.max.kbytes": 1_048_576,
        }
        conf.update(extra or {})
        self._new_producer: Callable[[], Any] = lambda: make_producer(brokers, **conf)
        self._producer = self._new_producer()
        self._errors: list[str] = []
        self._offsets: dict[tuple[str, int], int] = {}

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def _on_tracked_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        if topic is None or partition is None or offset is None:
            return
        tp = (topic, partition)
        if offset > self._offsets.get(tp, -1):
            self._offsets[tp] = offset

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        *,
        partition: int | None = None,
        headers: Sequence[tuple[str, bytes]] | None = None,
        track_offset: bool = False,
        timestamp_ms: int = 0,
    ) -> None:
        """Queue one message; ``track_offset`` records its offset for ``flush``'s callback;
        ``timestamp_ms``: its CreateTime (0: now)."""
        callback = self._on_tracked_delivery if track_offset else self._on_delivery
        produce(
            self._producer, topic, value, key=key, partition=partition, headers=headers,
            on_delivery=callback, timestamp_ms=timestamp_ms,
        )  # fmt: skip

    def warm(self, topics: Sequence[str], timeout_s: float = 10.0) -> None:
        """Fetch the topics' metadata now, so the first batch does not wait for it."""
        for topic in topics:
            self._producer.list_topics(topic, timeout=timeout_s)

    def poll(self) -> None:
        self._producer.poll(0)

    def hold_sends(self) -> None:
        """A delivery starts (nothing to hold: a flush covers later sends too)."""

    def release_sends(self) -> None:
        """The delivery started by ``hold_sends`` ended."""

    def deliver(self, consumed: NextOffsets) -> dict[tuple[str, int], int]:
        """Deliver everything sent so far (blocking; safe in a worker thread). The input
        offsets are committed by the consumer once the caller acknowledges the input."""
        return self.flush()

    def abandon(self) -> None:
        """Nothing to undo: what was sent is delivered or lost with the process."""

    def close(self) -> None:
        """Nothing to close: later sends are delivered like the rest (at least once)."""

    def flush(self, timeout_s: float = 30.0) -> dict[tuple[str, int], int]:
        """Wait until everything queued is delivered; raise EmitError if anything failed.

        Returns the highest delivered offset per (topic, partition) of the messages sent with
        ``track_offset`` since the previous flush. Safe to run in a worker thread while the
        event loop goes on (librdkafka releases the GIL while it waits).
        """
        remaining = self._producer.flush(timeout_s)
        if self._errors or remaining:
            errors, self._errors = self._errors, []
            detail = "; ".join(errors[:3]) or f"{remaining} messages not delivered"
            raise EmitError(f"output to Kafka failed: {detail}")
        offsets, self._offsets = self._offsets, {}
        return offsets


@dataclass(frozen=True)
class GroupMember:
    """This worker's membership of its consumer group, which fences a commit of offsets
    from a worker that has lost its partitions (KIP-447)."""

    group_id: str
    generation: int
    member_id: str
    instance_id: str | None = None  # static membership (group.instance.id)

    def metadata(self) -> bytes:
        """librdkafka's serialised ``rd_kafka_consumer_group_metadata_t``, what
        ``send_offsets_to_transaction`` takes (``Consumer.consumer_group_metadata()``
        returns the same bytes): magic, native int32 generation, NUL-terminated group and
        member ids, then 1 for "no group instance id" or 0 and the NUL-terminated id."""
        instance = (
            b"\x01" if self.instance_id is None else b"\x00" + self.instance_id.encode() + b"\0"
        )
        return b"".join(
            [
                b"CGMDv2:",
                struct.pack("=i", self.generation),
                self.group_id.encode() + b"\0",
                self.member_id.encode() + b"\0",
                instance,
            ]
        )


class TransactionalEmitter(KafkaEmitter):
    def __init__(
        self,
        brokers: str,
        transactional_id: str,
        member: Callable[[], GroupMember],
        *,
        timeout_ms: int = 15_000,
        extra: dict[str, Any] | None = None,
    ) -> None:
        conf: dict[str, Any] = {
            "transactional.id": transactional_id,
            "transaction.timeout.ms": timeout_ms,
            # Connected to every broker from the start, the group coordinator included. With
            # connections made on demand, the first send_offsets_to_transaction of a fresh
            # producer was seen to block past its timeout while librdkafka waited for the
            # coordinator's connection to come up (librdkafka issues #5456, #5511).
            "enable.sparse.connections": False,
        }
        conf.update(extra or {})
        super().__init__(brokers, conf)
        self.transactional_id = transactional_id
        self._member = member
        self._held: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        # what the open transaction holds, to send again if it has to be aborted
        self._sent: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self._holding = False
        self._started = False
        self._open = False
        self._closed = False
        # A transactional call's own timeout: one transaction timeout (the broker aborts the
        # transaction after that anyway).
        self._call_timeout_s = timeout_ms / 1000
        self._stuck_grace_s = STUCK_GRACE_S
        self._abandoned: list[Any] = []

    def start(self, timeout_s: float = 30.0) -> None:
        """Fence any earlier producer with this id (its open transaction is aborted) and open
        the first transaction. The worker calls it before it consumes anything; after that it
        only opens the next transaction (from the event loop's sends, or from a delivery in
        its thread while those sends are held: never both at once)."""
        if not self._started:
            self._producer.init_transactions(timeout_s)
            self._started = True
        if not self._open:
            self._producer.begin_transaction()
            self._open = True

    def send(self, topic: str, key: bytes | None, value: bytes, **kwargs: Any) -> None:
        if self._closed:
            return  # the worker stops: never committed (see close)
        # Stamped now, kept when sent later (held) or again (an aborted transaction): a
        # receiver tells a caught-up source mark that is still fresh from one it reads late by
        # its record's time (fraud.worker.source_marks).
        kwargs.setdefault("timestamp_ms", int(time.time() * 1000))
        if self._holding:
            self._held.append(((topic, key, value), kwargs))
            return
        if not self._open:
            self.start()
        self._sent.append(((topic, key, value), kwargs))
        super().send(topic, key, value, **kwargs)

    def hold_sends(self) -> None:
        self._holding = True

    def release_sends(self) -> None:
        """Open the next transaction and send into it what waited for the commit."""
        self._holding = False
        held, self._held = self._held, []
        for args, kwargs in held:
            self.send(*args, **kwargs)

    def deliver(self, consumed: NextOffsets) -> dict[tuple[str, int], int]:
        """Commit the open transaction with ``consumed`` as the group's offsets.

        A commit that fails with an abortable error (a broker or the group coordinator moved,
        a record was refused) is aborted and tried again: the same records, in the same order,
        in a new transaction, up to ``COMMIT_ATTEMPTS`` times. ``EmitError`` when it could
        not be committed (fenced by a newer instance, or out of attempts): then none of its
        outputs, state changes or offsets count, and the input is processed again."""
        self.start()
        for attempt in range(1, COMMIT_ATTEMPTS + 1):
            try:
                self._commit(consumed)
                break
            except StuckCall as exc:
                if attempt == COMMIT_ATTEMPTS:
                    self._open = False
                    self._sent.clear()
                    raise EmitError(f"transaction not committed: {exc}") from exc
                self._replace(exc)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                fatal = isinstance(error, KafkaError) and error.fatal()
                abortable = isinstance(error, KafkaError) and error.txn_requires_abort()
                if not (fatal or abortable) or attempt == COMMIT_ATTEMPTS:
                    self._abort(exc)
                if fatal:
                    self._replace(error)
                else:
                    log.warning("transaction aborted, sending it again (%d): %s", attempt, error)
                    self._resend()
        self._open = False
        self._sent.clear()
        offsets_out, self._offsets = self._offsets, {}
        return offsets_out

    def _commit(self, consumed: NextOffsets) -> None:
        if self._errors:
            errors, self._errors = self._errors, []
            error = KafkaError(
                KafkaError._INVALID_ARG, "; ".join(errors[:3]), txn_requires_abort=True
            )
            raise KafkaException(error)
        if consumed:
            offsets = [TopicPartition(t, p, o) for (t, p), o in consumed.items()]
            metadata = self._member().metadata()
            self._retrying(
                lambda: bounded(
                    lambda: self._producer.send_offsets_to_transaction(
                        offsets, metadata, self._call_timeout_s
                    ),
                    self._call_timeout_s,
                    self._stuck_grace_s,
                )
            )
        self._retrying(
            lambda: bounded(
                lambda: self._producer.commit_transaction(self._call_timeout_s),
                self._call_timeout_s,
                self._stuck_grace_s,
            )
        )
        if self._errors:
            # A delivery failed, yet the commit went through: never silently. The transaction
            # is over either way: the next send opens a new one.
            errors, self._errors = self._errors, []
            self._open = False
            self._sent.clear()
            self._offsets.clear()
            raise EmitError(f"output to Kafka failed: {'; '.join(errors[:3])}")

    def _resend(self) -> None:
        """Abort the transaction and send its records again in a new one."""
        try:
            # Retried while it times out, as a whole-cluster restart makes it do.
            self._retrying(lambda: self._producer.abort_transaction(2 * self._call_timeout_s))
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if not (isinstance(error, KafkaError) and error.fatal()):
                raise
            self._replace(error)  # e.g. INVALID_TXN_STATE on the abort after a controller kill
            return
        self._send_again()

    def _replace(self, error: object) -> None:
        """The producer is in a fatal state (librdkafka takes no more calls on it) or stuck in
        a call: a new one
        with the same transactional id fences it (its open transaction is aborted), and the
        records of the transaction are sent again in a new one. Before, the worker exited
        and its restart did the same, a rebalance later."""
        log.warning("the producer failed (%s): a new one sends the transaction again", error)
        # Kept, never destroyed: destroying a producer with a call blocked in it would block
        # this thread too.
        self._abandoned.append(self._producer)
        self._producer = self._new_producer()
        # Retried while it times out (librdkafka: "retry call to resume"): the cluster may
        # still be coming back, and a worker that exited here was restarted for nothing.
        self._retrying(lambda: self._producer.init_transactions(2 * self._call_timeout_s))
        self._send_again()

    def _send_again(self) -> None:
        self._errors.clear()
        self._offsets.clear()
        self._producer.begin_transaction()
        for args, kwargs in self._sent:
            super().send(*args, **kwargs)

    def _retrying(self, call: Callable[[], None]) -> None:
        for attempt in range(COMMIT_ATTEMPTS):
            try:
                call()
                return
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if not (isinstance(error, KafkaError) and error.retriable()):
                    raise
                if attempt == COMMIT_ATTEMPTS - 1:
                    raise
                log.warning("transaction commit retried: %s", error)

    def _abort(self, exc: KafkaException) -> NoReturn:
        error = exc.args[0] if exc.args else None
        self._open = False
        self._sent.clear()
        self._errors.clear()
        self._offsets.clear()
        if isinstance(error, KafkaError) and error.txn_requires_abort():
            try:
                self._producer.abort_transaction(30.0)
            except KafkaException as abort_exc:
                log.error("aborting the transaction failed: %s", abort_exc)
        raise EmitError(f"transaction not committed (aborted): {error}") from exc

    def close(self) -> None:
        """The last delivery is done and the worker stops: abort the transaction that sends
        since then opened, and drop every later send. A transaction left open would hold back
        every read-committed reader of its partitions (decisions, the repartition topic, the
        changelogs) until the broker aborts it, ``transaction.timeout.ms`` later."""
        self._closed = True
        failed = self._drop_open()
        if failed is not None:
            # e.g. INVALID_TXN_STATE while the partitions of its first records are still
            # being added: nothing of it is committed, and the next start fences it.
            log.warning("the transaction after the last delivery was left open: %s", failed)

    def abandon(self) -> None:
        """Abort the open transaction (the worker stops after a failed commit): nothing sent
        since the last commit counts."""
        failed = self._drop_open()
        if failed is not None:
            log.error("aborting the transaction failed: %s", failed)

    def _drop_open(self) -> KafkaException | None:
        """Forget what is held and sent, and abort the open transaction; the abort's failure."""
        self._holding = False
        self._held.clear()
        self._sent.clear()
        if not self._open:
            return None
        self._open = False
        try:
            self._producer.abort_transaction(10.0)
        except KafkaException as exc:
            return exc
        return None
