"""The batch contract's partitioner agrees with librdkafka's murmur2_random (through the broker)."""

from __future__ import annotations

from fraud.contracts.partitioning import group_by_partition, murmur2, partition_for
from fraud.v1.transaction_pb2 import Transaction


def test_murmur2_matches_the_java_clients_known_values() -> None:
    # Values from Kafka's own UtilsTest.testMurmur2 (as signed Java ints).
    cases = {
        b"21": -973932308,
        b"foobar": -790332482,
        b"a-little-bit-long-string": -985981536,
        b"a-little-bit-longer-string": -1486304829,
        b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
        b"abc": 479470107,
    }
    for data, java in cases.items():
        assert murmur2(data) == java & 0xFFFFFFFF, data


def test_group_by_partition_keeps_order_and_chunks() -> None:
    txs = [Transaction(transaction_id=str(i), customer_id=f"C{i % 9}") for i in range(50)]
    groups = group_by_partition(txs, [t.customer_id for t in txs], 4, max_items=5)
    assert all(len(g) <= 5 for _, g in groups)
    flat = [t for _, g in groups for t in g]
    assert sorted(int(t.transaction_id) for t in flat) == list(range(50))
    for partition, group in groups:
        assert all(partition_for(t.customer_id, 4) == partition for t in group)
    by_partition: dict[int, list[int]] = {}
    for partition, group in groups:
        by_partition.setdefault(partition, []).extend(int(t.transaction_id) for t in group)
    assert all(ids == sorted(ids) for ids in by_partition.values())
