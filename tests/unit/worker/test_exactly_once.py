"""The pieces of exactly-once that need no broker: the group metadata a transaction commits
offsets with, and the offsets a commit may store."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException
from prometheus_client import CollectorRegistry

from fraud.metrics import WorkerMetrics
from fraud.worker.app import FlushThread
from fraud.worker.checkpoint import Checkpoints, Consumed, Delivery, DeliveryFailed, Offsets
from fraud.worker.emitter import (
    EmitError,
    GroupMember,
    StuckCall,
    TransactionalEmitter,
    bounded,
)
from tests.unit.worker.test_loop import Background, FakeEmitter, settle


def test_group_metadata_is_the_bytes_librdkafka_serialises() -> None:
    # A consumer that never joined has generation -1 and no member id; librdkafka's own
    # serialisation of it is the reference.
    consumer = Consumer({"group.id": "fraud-worker", "bootstrap.servers": "127.0.0.1:1"})
    try:
        reference = consumer.consumer_group_metadata()
    finally:
        consumer.close()
    assert GroupMember("fraud-worker", -1, "").metadata() == reference


def test_group_metadata_of_a_static_member_is_the_bytes_librdkafka_serialises() -> None:
    consumer = Consumer(
        {"group.id": "g", "group.instance.id": "w-1", "bootstrap.servers": "127.0.0.1:1"}
    )
    try:
        reference = consumer.consumer_group_metadata()
    finally:
        consumer.close()
    assert GroupMember("g", -1, "", "w-1").metadata() == reference


def test_group_metadata_carries_generation_and_member() -> None:
    data = GroupMember("g", 7, "m-1").metadata()
    assert data == b"CGMDv2:" + (7).to_bytes(4, "little") + b"g\0m-1\0\x01"


def test_a_commit_stops_at_the_oldest_record_still_held() -> None:
    held: dict[tuple[str, int], int] = {}
    consumed = Consumed(lambda tp: held.get(tp))
    for offset in range(10):
        consumed.handled(("transactions", 0), offset)
    consumed.handled(("labels", 1), 4)
    consumed.handled(("labels", 1), 2)  # never moves back
    assert consumed.offsets() == {("transactions", 0): 10, ("labels", 1): 5}
    held[("transactions", 0)] = 6  # offset 6 is still in the aligner
    assert consumed.offsets() == {("transactions", 0): 6, ("labels", 1): 5}
    consumed.forget([("labels", 1)])
    assert consumed.offsets() == {("transactions", 0): 6}


def test_a_delivery_whose_agent_is_cancelled_still_completes_and_counts() -> None:
    """SIGTERM cancels the agents, possibly while a commit runs in its thread: the commit
    must end and be counted (never aborted under it), and the stop then delivers the rest."""

    async def main() -> None:
        emitter = FakeEmitter([])
        background = Background()
        background.gate.clear()
        delivered: list[Offsets] = []
        delivery = Delivery(
            emitter, [], WorkerMetrics(CollectorRegistry()), background, delivered.append
        )
        agent = asyncio.ensure_future(delivery.deliver())
        await settle()
        assert background.in_flight == 1
        agent.cancel()
        await settle()
        background.gate.set()
        with pytest.raises(asyncio.CancelledError):
            await agent
        assert delivery.failed is None and len(delivered) == 1
        assert ("abandon", "") not in emitter.journal
        await delivery.deliver()  # the stop's own delivery goes through
        assert emitter.flushes == 2

    asyncio.run(main())


class FakeTxnProducer:
    """The transactional calls of a confluent Producer; a produce's delivery fails when the
    topic is ``refused`` (reported at commit time, as librdkafka does)."""

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.calls: list[str] = []
        self.timestamps: list[int | None] = []
        self._reports: list[tuple[Any, str]] = []

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init")

    def begin_transaction(self) -> None:
        self.calls.append("begin")

    def produce(self, topic: str, value: bytes, **kwargs: Any) -> None:
        self.calls.append(f"produce {topic}")
        self.timestamps.append(kwargs.get("timestamp"))
        self._reports.append((kwargs["on_delivery"], topic))

    def poll(self, timeout: float = 0) -> int:
        return 0

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self.calls.append("offsets")

    def commit_transaction(self, timeout: float) -> None:
        for callback, topic in self._reports:
            error = KafkaError(KafkaError.MSG_SIZE_TOO_LARGE) if topic == self.refused else None
            callback(error, FakeMsg(topic))
        self._reports.clear()
        self.calls.append("commit")

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")


@dataclass
class FakeMsg:
    name: str

    def topic(self) -> str:
        return self.name

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 0


def emitter_on(producer: FakeTxnProducer, replacement: FakeTxnProducer | None = None,
               started: bool = False) -> TransactionalEmitter:  # fmt: skip
    """A transactional emitter on a fake producer (no broker), and the producer it would make
    to replace one it gives up (``replacement``)."""
    emitter = TransactionalEmitter(
        "127.0.0.1:1", "txn-test", lambda: GroupMember("g", 1, "m"), timeout_ms=1000
    )
    emitter._producer = producer  # type: ignore[assignment]
    if replacement is not None:
        emitter._new_producer = lambda: replacement
    emitter._started = started
    return emitter


def test_a_commit_that_went_through_with_a_failed_delivery_ends_its_transaction() -> None:
    """The failure is raised, and the next send opens a new transaction with none of the
    committed one's records to send again."""
    fake = FakeTxnProducer(refused="too-big")
    emitter = emitter_on(fake)
    emitter.send("too-big", None, b"x")
    emitter.send("decisions", None, b"y")
    with pytest.raises(EmitError, match="output to Kafka failed"):
        emitter.deliver({})
    fake.calls.clear()
    emitter.send("decisions", None, b"z")
    emitter.deliver({})
    assert fake.calls == ["begin", "produce decisions", "commit"]


def test_a_closed_emitter_aborts_what_was_sent_after_its_last_delivery_and_sends_no_more() -> None:
    """A stopping worker's agents run on after its last commit; their output must neither
    be committed nor keep a transaction open (read-committed readers would wait for it)."""
    fake = FakeTxnProducer(refused="none")
    emitter = emitter_on(fake)
    emitter.send("decisions", None, b"committed")
    emitter.deliver({})
    emitter.send("decisions", None, b"after the last delivery")
    fake.calls.clear()
    emitter.close()
    emitter.send("decisions", None, b"after close")
    assert fake.calls == ["abort"]


def test_the_stop_closes_the_emitter_after_an_agent_delivery_and_none_starts_after() -> None:
    """An agent starts a delivery while the stop's last one is in its thread: the emitter is
    closed (its open transaction aborted) only once that one is done too, never under it;
    and no checkpoint starts after the stop."""

    async def main() -> None:
        journal: list[tuple[str, str]] = []
        emitter = FakeEmitter(journal)
        background = Background()
        delivery = Delivery(
            emitter, [], WorkerMetrics(CollectorRegistry()), background, lambda offsets: None
        )
        checkpoints = Checkpoints(delivery, lambda: 1_000.0, interval_s=0.0)
        background.gate.clear()
        stop = asyncio.ensure_future(checkpoints.close())
        await settle()
        assert background.in_flight == 1  # the stop's delivery
        agent = asyncio.ensure_future(delivery.deliver())  # waits for it
        await settle()
        background.gate.set()
        await stop
        await agent
        flushes = [i for i, entry in enumerate(journal) if entry == ("flush", "")]
        assert len(flushes) == 2 and journal.index(("close", "")) > flushes[-1]
        checkpoints.hold([FakeEventForStop()])
        await checkpoints.if_due()
        await checkpoints.deliver_then_ack([])
        assert emitter.flushes == 2  # nothing delivered after the stop

    asyncio.run(main())


class FakeEventForStop:
    def ack(self) -> bool:
        raise AssertionError("an event decided after the stop is consumed again, not acked")


def test_a_delivery_stuck_past_its_limit_fails_the_worker() -> None:
    """A commit that never returns (its gate never opens) must not keep the worker in its
    group deciding nothing: the delivery fails, and so does every later one."""

    async def main() -> None:
        emitter = FakeEmitter([])
        background = Background()
        background.gate.clear()  # the commit in its thread never returns
        delivery = Delivery(
            emitter, [], WorkerMetrics(CollectorRegistry()), background, lambda offsets: None,
            stuck_after_s=0.05,
        )  # fmt: skip
        with pytest.raises(DeliveryFailed, match="more than 0 s"):
            await delivery.deliver()
        with pytest.raises(DeliveryFailed):
            await delivery.deliver()
        background.gate.set()  # let the thread's call end before the loop closes
        await settle()

    asyncio.run(main())


class FatalOnCommit(FakeTxnProducer):
    """A producer whose commit fails with a fatal error, as after a controller kill."""

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        raise KafkaException(KafkaError(KafkaError.INVALID_TXN_STATE, "fenced", fatal=True))


def test_a_producer_in_a_fatal_state_is_replaced_and_the_transaction_sent_again() -> None:
    """The new producer (same transactional id) fences the old one and commits the same
    records and offsets; the worker goes on instead of exiting."""
    broken = FatalOnCommit(refused="")
    fresh = FakeTxnProducer(refused="")
    emitter = emitter_on(broken, fresh, started=True)
    emitter.send("decisions", None, b"y")
    emitter.send("by-terminal", None, b"z")
    emitter.deliver({("transactions", 0): 7})
    assert broken.calls == [
        "begin",
        "produce decisions",
        "produce by-terminal",
        "offsets",
        "commit",
    ]
    assert fresh.calls == [
        "init", "begin", "produce decisions", "produce by-terminal", "offsets", "commit"
    ]  # fmt: skip
    # sent again with their first timestamps (a receiver tells stale marks by them)
    assert fresh.timestamps == broken.timestamps and None not in fresh.timestamps


class StuckOnOffsets(FakeTxnProducer):
    """A producer whose send_offsets_to_transaction never returns (librdkafka #5456)."""

    def __init__(self) -> None:
        super().__init__(refused="")
        self.release = threading.Event()

    def send_offsets_to_transaction(self, offsets: Any, metadata: Any, timeout: float) -> None:
        self.calls.append("offsets")
        self.release.wait()


def test_a_producer_stuck_in_a_call_past_its_timeout_is_given_up_for_a_new_one() -> None:
    stuck = StuckOnOffsets()
    fresh = FakeTxnProducer(refused="")
    emitter = emitter_on(stuck, fresh, started=True)
    emitter._call_timeout_s = emitter._stuck_grace_s = 0.05
    emitter.send("decisions", None, b"y")
    try:
        emitter.deliver({("transactions", 0): 7})
    finally:
        stuck.release.set()
    assert stuck.calls == ["begin", "produce decisions", "offsets"]
    assert fresh.calls == ["init", "begin", "produce decisions", "offsets", "commit"]


def test_a_bounded_call_raises_what_the_call_raises_and_gives_up_on_one_that_hangs() -> None:
    def refused() -> None:
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    with pytest.raises(KafkaException):
        bounded(refused, 0.01, 0.01)
    hang = threading.Event()

    def blocks() -> None:
        hang.wait()

    with pytest.raises(StuckCall):
        bounded(blocks, 0.01, 0.01)
    hang.set()


def test_the_flush_thread_runs_deliveries_in_order_and_never_keeps_the_process_alive() -> None:
    async def main() -> None:
        thread = FlushThread()
        assert thread._thread.daemon
        assert await thread.run(lambda: {("t", 0): 1}) == {("t", 0): 1}

        def fails() -> dict[tuple[str, int], int]:
            raise EmitError("refused")

        with pytest.raises(EmitError):
            await thread.run(fails)

    asyncio.run(main())


class SlowToInit(FakeTxnProducer):
    """A fresh producer whose init_transactions times out once (the cluster still restarting)."""

    def __init__(self) -> None:
        super().__init__(refused="")
        self.timeouts = 1

    def init_transactions(self, timeout: float) -> None:
        self.calls.append("init")
        if self.timeouts:
            self.timeouts -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "retry", retriable=True))


def test_a_replacement_producer_retries_its_init_while_the_cluster_comes_back() -> None:
    broken = FatalOnCommit(refused="")
    fresh = SlowToInit()
    emitter = emitter_on(broken, fresh, started=True)
    emitter.send("decisions", None, b"y")
    emitter.deliver({("transactions", 0): 7})
    assert fresh.calls == ["init", "init", "begin", "produce decisions", "offsets", "commit"]


class AbortsSlowly(FakeTxnProducer):
    """Commits fail abortably once, and the abort then times out once (the cluster away)."""

    def __init__(self) -> None:
        super().__init__(refused="")
        self.fail_commit = 1
        self.slow_abort = 1

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit")
        if self.fail_commit:
            self.fail_commit -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "x", txn_requires_abort=True))

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort")
        if self.slow_abort:
            self.slow_abort -= 1
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT, "retry", retriable=True))


def test_an_abort_that_times_out_is_retried_and_the_transaction_sent_again() -> None:
    slow = AbortsSlowly()
    emitter = emitter_on(slow, started=True)
    emitter.send("decisions", None, b"y")
    emitter.deliver({("transactions", 0): 7})
    assert slow.calls == [
        "begin", "produce decisions", "offsets", "commit", "abort", "abort", "begin",
        "produce decisions", "offsets", "commit",
    ]  # fmt: skip
