from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ALLOW: _ClassVar[Action]
    REVIEW: _ClassVar[Action]
    BLOCK: _ClassVar[Action]

class IncompleteInput(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INCOMPLETE_INPUT_UNSPECIFIED: _ClassVar[IncompleteInput]
    INCOMPLETE_LABELS: _ClassVar[IncompleteInput]
    INCOMPLETE_ALIGNMENT: _ClassVar[IncompleteInput]
ACTION_UNSPECIFIED: Action
ALLOW: Action
REVIEW: Action
BLOCK: Action
INCOMPLETE_INPUT_UNSPECIFIED: IncompleteInput
INCOMPLETE_LABELS: IncompleteInput
INCOMPLETE_ALIGNMENT: IncompleteInput

class Reason(_message.Message):
    __slots__ = ("code", "feature", "value", "contribution")
    CODE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    code: str
    feature: str
    value: float
    contribution: float
    def __init__(self, code: _Optional[str] = ..., feature: _Optional[str] = ..., value: _Optional[float] = ..., contribution: _Optional[float] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("transaction_id", "customer_id", "terminal_id", "amount_minor", "currency", "event_time_ms", "action", "score", "features", "rules_fired", "rules_version", "model_version", "reasons", "ingested_at_ms", "decided_at_ms", "source_topic", "source_partition", "source_offset", "source_index", "incomplete")
    class FeaturesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_MINOR_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    RULES_FIRED_FIELD_NUMBER: _ClassVar[int]
    RULES_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    INGESTED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOPIC_FIELD_NUMBER: _ClassVar[int]
    SOURCE_PARTITION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    SOURCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    INCOMPLETE_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    customer_id: str
    terminal_id: str
    amount_minor: int
    currency: str
    event_time_ms: int
    action: Action
    score: float
    features: _containers.ScalarMap[str, float]
    rules_fired: _containers.RepeatedScalarFieldContainer[str]
    rules_version: str
    model_version: str
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    ingested_at_ms: int
    decided_at_ms: int
    source_topic: str
    source_partition: int
    source_offset: int
    source_index: int
    incomplete: _containers.RepeatedScalarFieldContainer[IncompleteInput]
    def __init__(self, transaction_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., terminal_id: _Optional[str] = ..., amount_minor: _Optional[int] = ..., currency: _Optional[str] = ..., event_time_ms: _Optional[int] = ..., action: _Optional[_Union[Action, str]] = ..., score: _Optional[float] = ..., features: _Optional[_Mapping[str, float]] = ..., rules_fired: _Optional[_Iterable[str]] = ..., rules_version: _Optional[str] = ..., model_version: _Optional[str] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., ingested_at_ms: _Optional[int] = ..., decided_at_ms: _Optional[int] = ..., source_topic: _Optional[str] = ..., source_partition: _Optional[int] = ..., source_offset: _Optional[int] = ..., source_index: _Optional[int] = ..., incomplete: _Optional[_Iterable[_Union[IncompleteInput, str]]] = ...) -> None: ...
