"""Configuration shared by every confluent-kafka client the project creates.

librdkafka logs through Python logging (logger ``fraud.rdkafka``) instead of writing to stderr
itself, so a CLI error stays one line; ``-v`` shows those logs.

Producers use the Java client's partitioner (murmur2), as Faust/aiokafka and Kafka Streams do:
the worker's stages rely on topics keyed by the same id landing on the same partition number
(labels and the by-terminal repartition topic), so every producer of those topics must agree.
"""

from __future__ import annotations

import logging
from typing import Any

RDKAFKA_LOGGER = logging.getLogger("fraud.rdkafka")


def client_config(brokers: str, **extra: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"bootstrap.servers": brokers, "logger": RDKAFKA_LOGGER}
    conf.update(extra)
    return conf


def producer_config(brokers: str, **extra: Any) -> dict[str, Any]:
    conf = client_config(brokers, partitioner="murmur2_random")
    conf.update(extra)
    return conf
