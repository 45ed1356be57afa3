"""Hot policy updates through the compacted policy topic, end to end through the broker."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from sklearn.ensemble import HistGradientBoostingClassifier

from fraud.contracts.units import ALL_FEATURES
from fraud.kafka_config import client_config, producer_config
from fraud.model.export import from_gradient_boosting
from fraud.model.table import ModelTableError, save_model_table
from fraud.rules.table import RuleTableError
from fraud.scoring.policy import Policy, load_policy
from fraud.settings import Settings
from fraud.worker.policy_topic import (
    MODEL_KEY,
    RULES_KEY,
    PolicyWatcher,
    clear_model,
    ensure_policy_topic,
    policy_topic,
    policy_topic_spec,
    publish_model,
    publish_rules,
)

TIMEOUT_S = 15.0


def rules_file(tmp_path: Path, version: str, threshold: float = 220.0) -> Path:
    path = tmp_path / f"rules-{version}.csv"
    path.write_text(
        f"# version: {version}\n"
        "rule_id,feature,operator,threshold,action,reason,enabled\n"
        f"BIG,amount,>,{threshold},REVIEW,big amount,true\n"
        "RISKY,terminal_risk_7d,>=,0.5,BLOCK,risky terminal,true\n",
        encoding="utf-8",
    )
    return path


def model_file(tmp_path: Path, seed: int = 0) -> tuple[Path, str]:
    names = list(ALL_FEATURES)[:5]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, len(names)))
    y = (x[:, 0] + rng.normal(scale=0.5, size=300) > 0.8).astype(np.int64)
    hgb = HistGradientBoostingClassifier(max_iter=5, max_depth=3, random_state=seed).fit(x, y)
    table = from_gradient_boosting(hgb, feature_names=names)
    path = save_model_table(table, tmp_path / f"model-{seed}.json")
    return path, table.version


class Recorder:
    def __init__(self) -> None:
        self.policies: list[Policy] = []
        self.errors: list[str] = []

    def watcher(self, settings: Settings, initial: Policy) -> PolicyWatcher:
        return PolicyWatcher(settings, initial, self.policies.append, self.errors.append)


def poll_until(watcher: PolicyWatcher, done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while not done():
        assert time.monotonic() < deadline, "the watcher did not get there in time"
        watcher.poll_once(0.2)


def read_topic(settings: Settings) -> list[Message]:
    """Every record of the policy topic, without a consumer group commit."""
    topic = policy_topic(settings)
    consumer = Consumer(
        client_config(settings.brokers, **{"group.id": f"read-{uuid.uuid4().hex[:8]}"})
    )
    try:
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=5.0)
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        out: list[Message] = []
        next_offset = 0
        deadline = time.monotonic() + TIMEOUT_S
        while next_offset < high:
            assert time.monotonic() < deadline, "the policy topic was not read in time"
            for msg in consumer.consume(100, 0.2):
                if msg.error() is None:
                    out.append(msg)
                    next_offset = (msg.offset() or 0) + 1
        return out
    finally:
        consumer.close()


@pytest.fixture
def initial() -> Policy:
    return load_policy(Settings().rules_path)


def test_topic_spec_is_compacted(settings: Settings) -> None:
    spec = policy_topic_spec(settings)
    assert spec.name == f"{settings.topic_prefix}policy"
    assert spec.partitions == 1
    assert spec.config["cleanup.policy"] == "compact"
    assert spec.config["retention.ms"] == "-1"
    assert ensure_policy_topic(settings) is True
    assert ensure_policy_topic(settings) is False


def test_published_rules_reach_the_watcher(
    settings: Settings, tmp_path: Path, initial: Policy
) -> None:
    rec = Recorder()
    with rec.watcher(settings, initial) as watcher:
        assert not watcher.poll_once(0.2)
        assert watcher.current is initial
        assert publish_rules(settings, rules_file(tmp_path, "v2-test")) == "v2-test"
        poll_until(watcher, lambda: bool(rec.policies))
    assert [p.rules_version for p in rec.policies] == ["v2-test"]
    assert rec.policies[0].rules.rule_ids == ("BIG", "RISKY")
    assert rec.policies[0].model is None
    assert watcher.current is rec.policies[0]
    assert rec.errors == []
    (msg,) = read_topic(settings)
    assert msg.key() == RULES_KEY
    headers = {item[0]: item[1] for item in msg.headers() or ()}
    assert headers["version"] == b"v2-test"
    assert headers["file"] == b"rules-v2-test.csv"
    assert headers["published_at"]


def test_published_model_is_swapped_in_and_cleared(
    settings: Settings, tmp_path: Path, initial: Policy
) -> None:
    path, version = model_file(tmp_path)
    rec = Recorder()
    with rec.watcher(settings, initial) as watcher:
        assert publish_model(settings, path) == version
        poll_until(watcher, lambda: watcher.current.model is not None)
        swapped = watcher.current
        assert swapped.model_version == version
        assert swapped.model_columns == (0, 1, 2, 3, 4)
        assert swapped.rules is initial.rules
        clear_model(settings)
        poll_until(watcher, lambda: watcher.current.model is None)
    assert watcher.current.model_columns == ()
    assert watcher.current.rules_version == initial.rules_version
    assert [p.model_version for p in rec.policies] == [version, ""]
    assert rec.errors == []
    keys = [(m.key(), m.value() is None) for m in read_topic(settings)]
    assert keys[-1] == (MODEL_KEY, True)


def test_malformed_tables_are_refused_before_publishing(settings: Settings, tmp_path: Path) -> None:
    bad_rules = tmp_path / "bad.csv"
    bad_rules.write_text(
        "rule_id,feature,operator,threshold,action,reason,enabled\nX,amount,=>,5,REVIEW,typo,true\n"
    )
    with pytest.raises(RuleTableError, match=r"bad\.csv:2: unknown operator"):
        publish_rules(settings, bad_rules)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text(
        "rule_id,feature,operator,threshold,action,reason,enabled\n"
        "X,no_such_feature,>,5,REVIEW,oops,true\n"
    )
    with pytest.raises(RuleTableError, match=r"unknown\.csv:2:"):
        publish_rules(settings, unknown)
    bad_model = tmp_path / "bad.json"
    bad_model.write_text('{"format": "something else"}')
    with pytest.raises(ModelTableError, match=r"bad\.json: not a model table"):
        publish_model(settings, bad_model)
    with pytest.raises(RuleTableError, match="cannot read"):
        publish_rules(settings, tmp_path / "missing.csv")
    with pytest.raises(ModelTableError, match="cannot read"):
        publish_model(settings, tmp_path / "missing.json")
    ensure_policy_topic(settings)
    assert read_topic(settings) == []


def test_watcher_rejects_a_malformed_record_and_keeps_the_running_policy(
    settings: Settings, tmp_path: Path, initial: Policy
) -> None:
    rec = Recorder()
    with rec.watcher(settings, initial) as watcher:
        publish_rules(settings, rules_file(tmp_path, "good"))
        poll_until(watcher, lambda: watcher.current.rules_version == "good")
        running = watcher.current
        producer = Producer(producer_config(settings.brokers))
        topic = policy_topic(settings)
        producer.produce(topic, b"rule_id,feature\nnot,a table\n", RULES_KEY, partition=0)
        producer.produce(topic, b"{not json", MODEL_KEY, partition=0)
        assert producer.flush(10.0) == 0
        poll_until(watcher, lambda: len(rec.errors) >= 2)
        assert watcher.current is running
        assert rec.policies == [running]
        assert "keeping the running policy" in rec.errors[0]
        assert f"{topic}@1" in rec.errors[0]
        assert "not valid JSON" in rec.errors[1]
        # A valid update after the bad ones still goes through.
        publish_rules(settings, rules_file(tmp_path, "after", threshold=300.0))
        poll_until(watcher, lambda: watcher.current.rules_version == "after")
    assert watcher.current.model is None


def test_late_watcher_replays_to_the_latest_versions(
    settings: Settings, tmp_path: Path, initial: Policy
) -> None:
    model_a, _ = model_file(tmp_path, seed=1)
    model_b, version_b = model_file(tmp_path, seed=2)
    publish_rules(settings, rules_file(tmp_path, "r1"))
    publish_model(settings, model_a)
    publish_rules(settings, rules_file(tmp_path, "r2", threshold=250.0))
    publish_model(settings, model_b)
    publish_rules(settings, rules_file(tmp_path, "r3", threshold=260.0))

    rec = Recorder()
    caught_up = rec.watcher(settings, initial)
    try:
        final = caught_up.catch_up(TIMEOUT_S)
    finally:
        caught_up.stop()
    assert (final.rules_version, final.model_version) == ("r3", version_b)
    assert len(rec.policies) >= 1  # one swap per poll, not per record

    # The same through the background thread.
    threaded = Recorder()
    watcher = threaded.watcher(settings, initial)
    watcher.start()
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while watcher.current.rules_version != "r3" or watcher.current.model is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        watcher.stop()
    assert watcher.current.model_version == version_b
    assert threaded.errors == []
