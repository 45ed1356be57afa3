from fraud.v1 import transaction_pb2 as _transaction_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EnrichedTransaction(_message.Message):
    __slots__ = ("transaction", "customer_features", "ingested_at_ms", "source_topic", "source_partition", "source_offset", "source_index", "incomplete_alignment")
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FEATURES_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_ALIGNMENT_FIELD_NUMBER: _ClassVar[int]
    transaction: _transaction_pb2.Transaction
    customer_features: _containers.RepeatedScalarFieldContainer[float]
    ingested_at_ms: int
    source_topic: str
    source_partition: int
    source_offset: int
    source_index: int
    incomplete_alignment: bool
    def __init__(self, transaction: _Optional[_Union[_transaction_pb2.Transaction, _Mapping]] = ..., customer_features: _Optional[_Iterable[float]] = ..., ingested_at_ms: _Optional[int] = ..., source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., source_index: _Optional[int] = ..., incomplete_alignment: _Optional[bool] = ...) -> None: ...

class EnrichedBatch(_message.Message):
    __slots__ = ("items", "marks")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MARKS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[EnrichedTransaction]
    marks: _containers.RepeatedCompositeFieldContainer[SourceMark]
    def __init__(self, items: _Optional[_Iterable[_Union[EnrichedTransaction, _Mapping]]] = ..., marks: _Optional[_Iterable[_Union[SourceMark, _Mapping]]] = ...) -> None: ...

class SourceMark(_message.Message):
    __slots__ = ("partition", "event_time_ms")
    PARTITION_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    partition: int
    event_time_ms: int
    def __init__(self, partition: _Optional[int] = ..., event_time_ms: _Optional[int] = ...) -> None: ...
