"""Configuration shared by every confluent-kafka client the project creates.

librdkafka logs through Python logging (logger ``fraud.rdkafka``) instead of writing to stderr
itself, so a CLI error stays one line; ``-v`` shows those logs.
"""

from __future__ import annotations

import logging
from typing import Any

RDKAFKA_LOGGER = logging.getLogger("fraud.rdkafka")


def client_config(brokers: str, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": brokers, "logger": RDKAFKA_LOGGER}
    conf.update(extra)
    return conf
