"""Brokers: a local Apache Kafka cluster (the reference), the noida-db emulator (the fallback
where Java is missing), and the engine's topics, created alike on either and on a user's
cluster.

- ``kafka``: install Kafka from Maven Central, run 1..N KRaft nodes (``KafkaCluster``).
- ``noida``: the emulator (``NoidaBroker``).
- ``engine``: which of the two runs here (``choose_engine``, ``started_broker``).
- ``running``: the record a background broker leaves for ``fraud broker status|stop``.
- ``topics``: topic specs and configuration, ``ensure_topics``.
"""

from fraud.broker.engine import (
    ENGINE_ENV,
    ENGINES,
    LOCAL_BROKER,
    BrokerChoice,
    BrokerInUse,
    LocalBroker,
    broker_in_use,
    choose_engine,
    local_broker,
)
from fraud.broker.kafka import KafkaCluster, kafka_version
from fraud.broker.noida import NoidaBroker
from fraud.broker.process import BrokerError, free_port, port_open, stop_pids, wait_until_ready
from fraud.broker.running import PID_FILE, BrokerInfo, read_info, stop_recorded
from fraud.broker.topics import (
    TopicSpec,
    admin_client,
    create_topics,
    ensure_topics,
    topic_config,
    topic_specs,
)

__all__ = [
    "ENGINES",
    "ENGINE_ENV",
    "LOCAL_BROKER",
    "PID_FILE",
    "BrokerChoice",
    "BrokerError",
    "BrokerInUse",
    "BrokerInfo",
    "KafkaCluster",
    "LocalBroker",
    "NoidaBroker",
    "TopicSpec",
    "admin_client",
    "broker_in_use",
    "choose_engine",
    "create_topics",
    "ensure_topics",
    "free_port",
    "kafka_version",
    "local_broker",
    "port_open",
    "read_info",
    "stop_pids",
    "stop_recorded",
    "topic_config",
    "topic_specs",
    "wait_until_ready",
]
