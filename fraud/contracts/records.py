"""Shared pieces of the hot path: the raw record an agent hands to a stage, and alerts.

The stages are in ``fraud.scoring``, which also warms the kernels (``fraud.scoring.warmup``).
"""

from __future__ import annotations

from dataclasses import dataclass

from fraud.v1.alert_pb2 import Alert
from fraud.v1.decision_pb2 import Action, Decision


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One Kafka record as the agent received it."""

    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    # The ``fraud.contract`` header (fraud.contracts.partitioning): None for one message per record.
    contract: bytes | None = None


def alert_for(decision: Decision, now_ms: int) -> Alert:
    """The alert of a decision that is not ALLOW; its id is stable for de-duplication."""
    kind = Action.Name(decision.action).lower()
    return Alert(
        alert_id=f"{decision.transaction_id}/{kind}",
        type=f"fraud.{kind}",
        decision=decision,
        created_at_ms=now_ms,
    )
