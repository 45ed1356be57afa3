"""The batch contract: many transactions per Kafka record, grouped by partition.

One Kafka record per transaction caps a Faust worker at the framework's per-message cost (a
bare agent measured about 11,500 records/s here). A ``TransactionBatch`` record carries many
transactions of one partition: producers group transactions by the partition that Kafka's
default partitioner (murmur2 of the key, as the Java client and ``murmur2_random`` in
librdkafka compute it) gives their customer_id, and write each group to that partition
explicitly, so per-customer order and the worker's state partitioning are those of records
keyed by customer. The record has no key and the header ``fraud.contract:
fraud.v1.TransactionBatch``; the worker checks every transaction's partition.

The same header names the protobuf type of every record the project produces (``Transaction``,
``Label``, ``Decision``, ``Alert``, ``DeadLetter``, ``EnrichedBatch``...; :func:`type_headers`),
so that a record of one type produced onto another type's topic is refused instead of decoding
as garbage: protobuf field numbers overlap, and a ``Decision`` parses as a ``Transaction``. A
record without the header is taken as its topic's default type (third-party producers).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import TypeVar

from google.protobuf.message import Message

from fraud.v1.alert_pb2 import Alert
from fraud.v1.dead_letter_pb2 import DeadLetter
from fraud.v1.decision_pb2 import Decision
from fraud.v1.enriched_pb2 import EnrichedBatch, EnrichedTransaction
from fraud.v1.label_pb2 import Label
from fraud.v1.transaction_pb2 import Transaction, TransactionBatch


def type_name(message_type: type[Message]) -> bytes:
    """The header value naming ``message_type``: its full protobuf name (``fraud.v1.Label``)."""
    return message_type.DESCRIPTOR.full_name.encode()


CONTRACT_HEADER = "fraud.contract"
TRANSACTION = type_name(Transaction)
TRANSACTION_BATCH = type_name(TransactionBatch)
LABEL = type_name(Label)
DECISION = type_name(Decision)
ALERT = type_name(Alert)
DEAD_LETTER = type_name(DeadLetter)
ENRICHED_TRANSACTION = type_name(EnrichedTransaction)
ENRICHED_BATCH = type_name(EnrichedBatch)
# Keep records well under Kafka's default 1 MB message size.
MAX_BATCH = 1000

M = TypeVar("M", bound=Message)

_M = 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (Java client ``Utils.murmur2``), as an unsigned 32-bit value."""
    length = len(data)
    h = (0x9747B28C ^ length) & _MASK
    n4 = length & ~3
    for i in range(0, n4, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    extra = length & 3
    if extra == 3:
        h ^= data[n4 + 2] << 16
    if extra >= 2:
        h ^= data[n4 + 1] << 8
    if extra >= 1:
        h ^= data[n4]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


@lru_cache(maxsize=1 << 20)
def partition_for(key: str, partitions: int) -> int:
    """The partition of a record keyed by ``key`` (UTF-8) under Kafka's default partitioner."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def group_by_partition(
    items: Iterable[M], keys: Iterable[str], partitions: int, max_items: int = MAX_BATCH
) -> list[tuple[int, list[M]]]:
    """``items`` grouped by the partition of their key, in order, in chunks of ``max_items``."""
    groups: dict[int, list[M]] = {}
    for item, key in zip(items, keys, strict=True):
        groups.setdefault(partition_for(key, partitions), []).append(item)
    out: list[tuple[int, list[M]]] = []
    for partition, group in groups.items():
        for start in range(0, len(group), max_items):
            out.append((partition, group[start : start + max_items]))
    return out


def contract_of(
    headers: Sequence[tuple[str, bytes | None]] | Mapping[str, bytes | None] | None,
) -> bytes | None:
    """The ``fraud.contract`` header's value, if any (headers as pairs or as a mapping)."""
    if not headers:
        return None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        if name == CONTRACT_HEADER:
            return value
    return None


def type_headers(message_type: bytes) -> list[tuple[str, bytes]]:
    """The headers of a record holding one ``message_type`` (a constant above)."""
    return [(CONTRACT_HEADER, message_type)]
