"""Webhook sink, pure parts: offset tracker, subscriptions (parse, filter, reload), envelopes."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import pytest

from fraud.sinks.webhooks.envelope import (
    Envelope,
    OffsetTracker,
    decode,
    encode,
    event_id_for,
    percentile,
)
from fraud.sinks.webhooks.subscriptions import (
    Subscription,
    SubscriptionError,
    SubscriptionWatcher,
    parse_subscriptions,
)
from fraud.v1.alert_pb2 import Alert
from fraud.v1.decision_pb2 import Action, Decision

# ---------------------------------------------------------------- offset tracker


def test_tracker_commits_up_to_first_unfinished() -> None:
    t = OffsetTracker()
    assert t.committable() is None
    t.add(10, 2)
    t.add(11, 1)
    t.add(12, 0)  # no matching subscription: finished at once
    t.add(13, 1)
    assert t.committable() == 10
    t.done(11)  # out of order: 10 still unfinished
    t.done(13)
    assert t.committable() == 10
    t.done(10)
    assert t.committable() == 10  # one of its two deliveries left
    assert t.unfinished == 1
    t.done(10)
    assert t.committable() == 14
    assert t.unfinished == 0
    assert len(t) == 0


def test_tracker_records_without_deliveries_advance() -> None:
    t = OffsetTracker()
    t.add(0, 0)
    t.add(1, 0)
    assert t.committable() == 2
    t.add(5, 1)  # gaps (compaction, skipped records) are fine
    assert t.committable() == 5
    t.done(5)
    assert t.committable() == 6


def test_tracker_rejects_misuse() -> None:
    t = OffsetTracker()
    t.add(3, 1)
    with pytest.raises(ValueError, match="added after"):
        t.add(2, 1)
    with pytest.raises(ValueError, match="no unfinished"):
        t.done(4)
    with pytest.raises(ValueError, match="negative"):
        t.add(4, -1)
    t.done(3)
    with pytest.raises(ValueError, match="no unfinished"):
        t.done(3)


def test_tracker_many_out_of_order() -> None:
    t = OffsetTracker()
    for offset in range(100):
        t.add(offset, 1)
    for offset in reversed(range(1, 100)):
        t.done(offset)
        assert t.committable() == 0
    t.done(0)
    assert t.committable() == 100


# ---------------------------------------------------------------- subscriptions

GOOD = """
[[subscription]]
id = "risk"
url = "https://hooks.example/fraud"
secrets = ["s3cret-new", "s3cret-old"]
min_action = "REVIEW"
min_score = 0.5
types = ["fraud.review"]
max_concurrency = 2
timeout_s = 1.5

[[subscription]]
id = "blocks"
url = "http://127.0.0.1:9/x"
secrets = ["k"]
min_action = "BLOCK"
"""


def alert(action: int, score: float, type_: str = "fraud.review") -> Alert:
    decision = Decision(action=action, score=score)  # type: ignore[arg-type]
    return Alert(alert_id="a1", type=type_, decision=decision)


def test_parse_subscriptions() -> None:
    risk, blocks = parse_subscriptions(GOOD)
    assert risk.id == "risk"
    assert risk.secrets == (b"s3cret-new", b"s3cret-old")
    assert risk.min_action == Action.REVIEW
    assert risk.min_score == 0.5
    assert risk.types == frozenset({"fraud.review"})
    assert risk.max_concurrency == 2
    assert risk.timeout_s == 1.5
    assert blocks.min_action == Action.BLOCK
    assert blocks.types is None
    assert blocks.max_concurrency == 4
    assert blocks.timeout_s == 5.0
    assert parse_subscriptions("") == ()


def test_secrets_are_masked() -> None:
    risk, _ = parse_subscriptions(GOOD)
    for text in (repr(risk), str(risk), repr(parse_subscriptions(GOOD))):
        assert "s3cret" not in text
        assert "2 masked" in text


def test_subscription_filter() -> None:
    risk, blocks = parse_subscriptions(GOOD)
    assert risk.matches(alert(Action.REVIEW, 0.5))
    assert risk.matches(alert(Action.BLOCK, 0.9))
    assert not risk.matches(alert(Action.REVIEW, 0.49))
    assert not risk.matches(alert(Action.REVIEW, math.nan))
    assert not risk.matches(alert(Action.BLOCK, 0.9, "fraud.block"))
    assert not risk.matches(alert(Action.ALLOW, 1.0))
    assert not blocks.matches(alert(Action.REVIEW, 1.0))
    assert blocks.matches(alert(Action.BLOCK, 0.0, "anything"))
    assert not blocks.matches(alert(Action.ACTION_UNSPECIFIED, 1.0))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[subscription]\n", "not valid TOML"),
        ("x = 1", "unknown top-level"),
        ("subscription = 1", "array of tables"),
        ('[[subscription]]\nurl = "http://a/"\nsecrets = ["k"]', "id is required"),
        ('[[subscription]]\nid = "a"\nsecrets = ["k"]', "url is required"),
        ('[[subscription]]\nid = "a"\nurl = "ftp://a/"\nsecrets = ["k"]', "http"),
        ('[[subscription]]\nid = "a"\nurl = "http://a/"', "secrets"),
        ('[[subscription]]\nid = "a"\nurl = "http://a/"\nsecrets = []', "secrets"),
        ('[[subscription]]\nid = "a"\nurl = "http://a/"\nsecrets = [""]', "secrets"),
        (
            '[[subscription]]\nid = "a"\nurl = "http://a/"\nsecrets = ["k"]\nmin_action = "ALLOW"',
            "min_action",
        ),
        (
            '[[subscription]]\nid = "a"\nurl = "http://a/"\nsecrets = ["k"]\nmin_score = 2',
            "min_score",
        ),
        (
            '[[subscription]]\nid = "a"\nurl = "http://a/"\nsecrets = ["k"]\nmax_concurrency = 0',
            "max_concurrency",
        ),
        (
            '[[subscription]]\nid = "a"\nurl = "http://a/"\nsecrets = ["k"]\ntimeout_s = 0',
            "timeout_s",
        ),
        (
            '[[subscription]]\nid = "a"\nurl = "http://a/"\nsecrets = ["k"]\ntypes = "x"',
            "types",
        ),
        ('[[subscription]]\nid = "a"\nurl = "http://a/"\nsecrets = ["k"]\nsecret = "k"', "unknown"),
        (
            '[[subscription]]\nid = "a"\nurl = "http://a/"\nsecrets = ["k"]\n'
            '[[subscription]]\nid = "a"\nurl = "http://b/"\nsecrets = ["k"]',
            "duplicate",
        ),
    ],
)
def test_invalid_subscriptions(text: str, message: str) -> None:
    with pytest.raises(SubscriptionError, match=message):
        parse_subscriptions(text, "subs.toml")


def test_error_names_the_entry_but_not_the_secret() -> None:
    text = '[[subscription]]\nid = "a"\nurl = "nope"\nsecrets = ["hush"]'
    with pytest.raises(SubscriptionError) as info:
        parse_subscriptions(text, "subs.toml")
    assert "subs.toml: subscription #1 (a)" in str(info.value)
    assert "hush" not in str(info.value)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def write(path: Path, text: str, bump_ns: int) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + bump_ns))


def test_watcher_reloads_on_change_at_most_every_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "subs.toml"
    one = '[[subscription]]\nid = "a"\nurl = "http://a/"\nsecrets = ["k"]\n'
    two = one + '[[subscription]]\nid = "b"\nurl = "http://b/"\nsecrets = ["k"]\n'
    path.write_text(one)
    clock = FakeClock()
    watcher = SubscriptionWatcher(path, interval_s=1.0, clock=clock)
    assert [s.id for s in watcher.current] == ["a"]

    write(path, two, 1_000_000)
    clock.now = 0.5
    assert not watcher.poll()  # too soon
    assert [s.id for s in watcher.current] == ["a"]
    clock.now = 1.0
    assert watcher.poll()
    assert [s.id for s in watcher.current] == ["a", "b"]
    assert watcher.reloads == 1

    clock.now = 2.0
    assert not watcher.poll()  # unchanged file: not even read

    write(path, "[[subscription]\nbroken", 2_000_000)
    clock.now = 3.0
    with caplog.at_level(logging.ERROR, logger="fraud.sinks.webhooks.subscriptions"):
        assert not watcher.poll()
    assert [s.id for s in watcher.current] == ["a", "b"]  # the running set is kept
    assert watcher.errors == 1
    assert watcher.last_error is not None and "not valid TOML" in watcher.last_error
    assert "keeping 2 running" in caplog.text

    path.unlink()
    clock.now = 4.0
    assert not watcher.poll()
    assert [s.id for s in watcher.current] == ["a", "b"]
    assert watcher.errors == 2


def test_watcher_refuses_a_bad_file_at_start(tmp_path: Path) -> None:
    path = tmp_path / "subs.toml"
    path.write_text("nope nope")
    with pytest.raises(SubscriptionError):
        SubscriptionWatcher(path)
    with pytest.raises(SubscriptionError, match="cannot read"):
        SubscriptionWatcher(tmp_path / "missing.toml")


# ---------------------------------------------------------------- envelopes


def test_envelope_round_trip() -> None:
    env = Envelope(
        event_id=event_id_for("alert-1", "risk"),
        subscription_id="risk",
        alert_id="alert-1",
        body='{"alert_id": "alert-1", "note": "é"}'.encode(),
        created_at_ms=1,
        url="http://x/",
        attempt=2,
        first_attempt_ms=10,
        last_attempt_ms=20,
        last_status=None,
        last_error="timeout after 5 s",
        due_ms=30,
    )
    assert env.event_id == "alert-1:risk"
    assert decode(encode(env)) == env
    assert b'"body":"{\\"alert_id\\"' in encode(env)  # readable JSON, not base64
    binary = Envelope("e", "s", "a", b"\xff\x00")
    assert decode(encode(binary)) == binary


def test_after_attempt() -> None:
    env = Envelope("e", "s", "a", b"{}")
    one = env.after_attempt(url="http://x/", now_ms=100, status=500, error="HTTP 500")
    two = one.after_attempt(url="http://x/", now_ms=300, status=None, error="timeout")
    assert (two.attempt, two.first_attempt_ms, two.last_attempt_ms) == (2, 100, 300)
    assert (two.last_status, two.last_error) == (None, "timeout")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v": 2}',
        b'{"v": 1, "event_id": "e", "subscription_id": "s", "alert_id": "a"}',
        b'{"v": 1, "event_id": "e", "subscription_id": "s", "alert_id": "a", "body": 3}',
        b'{"v": 1, "event_id": "", "subscription_id": "s", "alert_id": "a", "body": "{}"}',
        b'{"v": 1, "event_id": "e", "subscription_id": "s", "alert_id": "a", "body": "{}",'
        b' "attempt": "3"}',
        b'{"v": 1, "event_id": "e", "subscription_id": "s", "alert_id": "a", "body_b64": "!"}',
    ],
)
def test_bad_envelopes(raw: bytes) -> None:
    with pytest.raises(ValueError):
        decode(raw)


def test_unknown_envelope_fields_are_ignored() -> None:
    raw = b'{"v": 1, "event_id": "e", "subscription_id": "s", "alert_id": "a", "body": "{}",'
    raw += b' "from_the_future": 1}'
    assert decode(raw) == Envelope("e", "s", "a", b"{}")


def test_percentile() -> None:
    assert math.isnan(percentile([], 0.5))
    assert percentile([5.0], 0.99) == 5.0
    samples = [float(i) for i in range(1, 101)]
    assert percentile(samples, 0.5) == 50.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile(samples, 1.0) == 100.0
    assert percentile(samples, 0.0) == 1.0


def test_subscription_is_hashable_and_comparable() -> None:
    a = Subscription("a", "http://a/", (b"k",))
    assert a == Subscription("a", "http://a/", (b"k",))
    assert a != Subscription("a", "http://a/", (b"k2",))
    assert len({a}) == 1
