from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Label(_message.Message):
    __slots__ = ("transaction_id", "customer_id", "terminal_id", "fraud", "transaction_time_ms", "event_time_ms")
    TRANSACTION_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    TERMINAL_ID_FIELD_NUMBER: _ClassVar[int]
    FRAUD_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_MS_FIELD_NUMBER: _ClassVar[int]
    transaction_id: str
    customer_id: str
    terminal_id: str
    fraud: bool
    transaction_time_ms: int
    event_time_ms: int
    def __init__(self, transaction_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., terminal_id: _Optional[str] = ..., fraud: _Optional[bool] = ..., transaction_time_ms: _Optional[int] = ..., event_time_ms: _Optional[int] = ...) -> None: ...
