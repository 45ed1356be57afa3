"""Every Kafka client of the package is built by ``fraud.kafka_config``: one place for what
reaching the brokers takes."""

from __future__ import annotations

import ast
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from fraud.kafka_config import (
    RDKAFKA_LOGGER,
    aiokafka_config,
    client_config,
    make_consumer,
    make_producer,
    producer_config,
    watermark_offsets,
)
from fraud.settings import Settings

PACKAGE = Path(__file__).resolve().parents[2] / "fraud"
FACTORY = PACKAGE / "kafka_config.py"
CONFLUENT = {"Producer", "Consumer"}
AIOKAFKA = {"AIOKafkaProducer", "AIOKafkaConsumer"}

SETTINGS = Settings(brokers="kafka-1:9092,kafka-2:9092")


def test_settings_and_a_bootstrap_list_configure_the_same_client() -> None:
    assert client_config(SETTINGS) == client_config("kafka-1:9092,kafka-2:9092")
    conf = producer_config(SETTINGS, acks="all")
    assert conf["bootstrap.servers"] == "kafka-1:9092,kafka-2:9092"
    assert conf["logger"] is RDKAFKA_LOGGER
    assert conf["partitioner"] == "murmur2_random" and conf["acks"] == "all"
    assert producer_config(SETTINGS, partitioner="consistent")["partitioner"] == "consistent"


def test_aiokafka_config_is_keyword_arguments_with_the_brokers() -> None:
    conf = aiokafka_config(SETTINGS, client_id="x", acks="all")
    assert conf == {"bootstrap_servers": "kafka-1:9092,kafka-2:9092", "client_id": "x",
                    "acks": "all"}  # fmt: skip
    assert aiokafka_config("h:1") == {"bootstrap_servers": "h:1"}


def test_the_factories_build_clients_without_a_broker() -> None:
    producer = make_producer("127.0.0.1:1", **{"linger.ms": 0})  # construction does not connect
    assert isinstance(producer, Producer)
    assert producer.flush(0) == 0
    consumer = make_consumer("127.0.0.1:1", **{"group.id": "g"})
    assert isinstance(consumer, Consumer)
    consumer.close()


def _constructions(path: Path, factory: Path = FACTORY) -> list[str]:
    """Calls in ``path`` that build a Kafka client other than through the factory."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        direct = name in CONFLUENT and path != factory
        unconfigured = name in AIOKAFKA and not any(
            kw.arg is None
            and isinstance(kw.value, ast.Call)
            and getattr(kw.value.func, "id", "") == "aiokafka_config"
            for kw in node.keywords
        )
        if direct or unconfigured:
            found.append(f"{path.name}:{node.lineno} {name}")
    return found


def test_every_client_of_the_package_is_built_by_the_factory() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}: {c}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for c in _constructions(path)
    ]
    assert found == []


def test_the_check_sees_a_construction_outside_the_factory(tmp_path: Path) -> None:
    stray = tmp_path / "stray.py"
    stray.write_text(
        "from confluent_kafka import Producer\nfrom aiokafka import AIOKafkaConsumer\n"
        "p = Producer({'bootstrap.servers': 'x'})\n"
        "c = AIOKafkaConsumer(bootstrap_servers='x')\n"
        "ok = AIOKafkaConsumer('topic', **aiokafka_config('x'))\n"
    )
    assert _constructions(stray) == ["stray.py:3 Producer", "stray.py:4 AIOKafkaConsumer"]
    assert _constructions(FACTORY) == []  # the factory itself may call the constructors


class NewTopicConsumer:
    """get_watermark_offsets as librdkafka answers it for a topic created a moment ago."""

    def __init__(self, unknown_for: int) -> None:
        self.unknown_for = unknown_for

    def get_watermark_offsets(self, partition: object, timeout: float) -> tuple[int, int]:
        if self.unknown_for:
            self.unknown_for -= 1
            raise KafkaException(KafkaError(KafkaError._UNKNOWN_PARTITION))
        return 0, 7


def test_watermarks_of_a_partition_the_client_does_not_know_yet_are_asked_again() -> None:
    consumer = NewTopicConsumer(unknown_for=3)
    assert watermark_offsets(consumer, TopicPartition("t", 0), 5.0) == (0, 7)  # type: ignore[arg-type]
