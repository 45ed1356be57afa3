"""``fraud tail``: every dead-letter topic is read as ``fraud.v1.DeadLetter``."""

from __future__ import annotations

import pytest

from fraud.contracts.wire import Rejected
from fraud.settings import Settings
from fraud.sinks.webhooks.envelope import Envelope, envelope_dead_letter
from fraud.tools.tail import DEAD_LETTER_KINDS, _decoder, _topic, human
from fraud.v1.dead_letter_pb2 import DeadLetter

SETTINGS = Settings(topic_prefix="p-")


def test_each_dead_letter_kind_has_its_own_topic() -> None:
    topics = {kind: _topic(SETTINGS, kind) for kind in DEAD_LETTER_KINDS}
    assert topics == {
        "dead-letters": "p-transactions-dlq",
        "webhook-dead-letters": "p-alerts-webhooks-dlq",
        "notifier-dead-letters": "p-notifier-dlq",
    }


@pytest.mark.parametrize("kind", DEAD_LETTER_KINDS)
def test_a_webhook_dead_letter_prints_on_every_dead_letter_kind(kind: str) -> None:
    envelope = Envelope("a:s", "s", "a", b"{}", source_topic="p-alerts", source_partition=1,
                        source_offset=5)  # fmt: skip
    letter = envelope_dead_letter(envelope, Rejected("not_retryable", "HTTP 400"), 1)
    msg = _decoder(kind)(letter.SerializeToString())
    assert isinstance(msg, DeadLetter)
    assert human(kind, msg) == (
        "DEAD p-alerts[1]@5 not_retryable: HTTP 400 [payload fraud.webhooks.Envelope]"
    )
