from fraud.v1 import decision_pb2 as _decision_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Alert(_message.Message):
    __slots__ = ("alert_id", "type", "decision", "created_at_ms")
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    type: str
    decision: _decision_pb2.Decision
    created_at_ms: int
    def __init__(self, alert_id: _Optional[str] = ..., type: _Optional[str] = ..., decision: _Optional[_Union[_decision_pb2.Decision, _Mapping]] = ..., created_at_ms: _Optional[int] = ...) -> None: ...
