"""The notifier's dead-letter re-drive without a broker: parsing, selection, rebuild, marking."""

from __future__ import annotations

import asyncio
import json
import tomllib
from typing import Any

from prometheus_client import CollectorRegistry

from fraud.contracts.records import RawRecord
from fraud.metrics import NotifierMetrics
from fraud.sinks.notify.dlq import (
    NotifierLetter,
    RedriveResult,
    Selector,
    _Redrive,
    parse_letter,
    rebuild,
    select,
)
from fraud.sinks.notify.routing import Notification, NotifyConfig, SendError, parse_config
from fraud.sinks.notify.service import Dispatcher, Sender
from fraud.sinks.redrive import MarkerWriter
from fraud.v1.alert_pb2 import Alert

CONFIG = """
[smtp]
host = "smtp.example.com"
sender = "fraud@example.com"

[sms]
url = "https://sms.example.com/send"

[delivery]
attempts = 2
backoff_s = 0.5
breaker_failures = 100

[recipients]
C1 = { email = "c1@example.com", sms = "+4915100000001" }

[[route]]
name = "desk"
topic = "alerts"
channel = "email"
to = ["desk@example.com", "lead@example.com"]

[[route]]
name = "customer-sms"
topic = "alerts"
channel = "sms"

[[route]]
name = "welcome"
topic = "user-signups"
format = "json"
channel = "email"
to_field = "email"
template = "welcome"

[templates.welcome]
subject = "Welcome, ${name}; route=x channel=sms to=y attempts=1 subject=z"
body = "Hi ${name}"
"""


def config(text: str = CONFIG) -> NotifyConfig:
    return parse_config(tomllib.loads(text), {})


class Switchable:
    """A sender that fails (retryable) while ``down``, else records what it sent."""

    def __init__(self, down: bool) -> None:
        self.down = down
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        if self.down:
            raise SendError("smtp connection failed: refused", retryable=True)
        self.sent.append(notification)

    async def close(self) -> None:
        pass


def dispatcher(cfg: NotifyConfig, senders: dict[str, Switchable]) -> Dispatcher:
    async def no_sleep(_seconds: float) -> None:
        pass

    active: dict[Any, Sender] = dict(senders)
    return Dispatcher(cfg, active, clock=lambda: 1_800_000_000.0, monotonic=lambda: 0.0,
                      sleep=no_sleep, metrics=NotifierMetrics(CollectorRegistry()))  # fmt: skip


def alert(tx: str, customer: str = "C1") -> bytes:
    a = Alert(alert_id=f"{tx}/block", type="fraud.block")
    a.decision.customer_id = customer
    a.decision.transaction_id = tx
    return a.SerializeToString()


def dead_letters(cfg: NotifyConfig, records: list[RawRecord]) -> list[NotifierLetter]:
    """What the real notifier dead-letters with every channel down, parsed as the DLQ holds it
    (offsets 0, 1, ... of partition 0)."""
    d = dispatcher(cfg, {"email": Switchable(True), "sms": Switchable(True)})
    out: list[NotifierLetter] = []
    for record in records:
        routes = [r for r in cfg.routes if r.topic == record.topic]
        for letter in asyncio.run(d.handle(routes, record)):
            out.append(parse_letter(0, len(out), letter))
    return out


def records() -> list[RawRecord]:
    signup = json.dumps({"user_id": 7, "name": "Ada", "email": "ada@example.com"}).encode()
    return [
        RawRecord(b"C1", alert("T1"), "alerts", 0, 10, 0),
        RawRecord(b"C1", alert("T2"), "alerts", 1, 11, 0),
        RawRecord(b"7", signup, "user-signups", 0, 3, 0),
        RawRecord(None, b"\xffnot json", "user-signups", 0, 4, 0),
    ]


class FakeProducer:
    """Keeps what is produced (confluent_kafka.Producer's produce/poll/flush)."""

    def __init__(self) -> None:
        self.produced: list[tuple[str, bytes, bytes]] = []

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: Any) -> None:
        self.produced.append((topic, key, value))

    def poll(self, _timeout: float) -> int:
        return 0

    def flush(self, _timeout: float) -> int:
        return 0


def test_a_failed_sends_letter_names_channel_recipient_route_and_event_id() -> None:
    letters = dead_letters(config(), records())
    facts = [(e.letter.reason, e.route, e.channel, e.recipient, e.event_id) for e in letters]
    assert facts == [
        ("send_failed", "desk", "email", "desk@example.com", "T1/block"),
        ("send_failed", "desk", "email", "lead@example.com", "T1/block"),
        ("send_failed", "customer-sms", "sms", "+4915100000001", "T1/block"),
        ("send_failed", "desk", "email", "desk@example.com", "T2/block"),
        ("send_failed", "desk", "email", "lead@example.com", "T2/block"),
        ("send_failed", "customer-sms", "sms", "+4915100000001", "T2/block"),
        # a JSON event's id is its source coordinates
        ("send_failed", "welcome", "email", "ada@example.com", "user-signups:0:3"),
        ("decode_error", None, None, None, "user-signups:0:4"),
    ]
    assert letters[0].cause == "smtp connection failed: refused (after 2 attempts)"
    assert [e.redrivable for e in letters] == [True] * 7 + [False]
    assert letters[0].marker_key == "0:0" and letters[7].marker_key == "0:7"
    summary = letters[0].summary()
    assert "0:0 T1/block email desk@example.com reason=send_failed at=" in summary
    assert "(re-driven)" not in summary


def test_selection_by_channel_recipient_event_id_and_markers() -> None:
    letters = dead_letters(config(), records())

    def keys(selector: Selector, redriven: frozenset[str] = frozenset()) -> list[str]:
        return [e.marker_key for e in select(letters, set(redriven), selector)]

    assert len(keys(Selector())) == 8 and Selector().empty
    assert keys(Selector(channel="sms")) == ["0:2", "0:5"]
    assert keys(Selector(recipient="lead@example.com")) == ["0:1", "0:4"]
    assert keys(Selector(event_id="T2/block")) == ["0:3", "0:4", "0:5"]
    assert keys(Selector(event_id="alerts:1:11")) == ["0:3", "0:4", "0:5"]  # coordinates too
    assert keys(Selector(channel="email", event_id="T2/block")) == ["0:3", "0:4"]  # combined
    assert keys(Selector(channel="email", recipient="+4915100000001")) == []
    # a marked letter is left out, unless asked for, and then says so
    assert keys(Selector(channel="sms"), frozenset({"0:2"})) == ["0:5"]
    [marked, _] = select(letters, {"0:2"}, Selector(channel="sms"), include_redriven=True)
    assert marked.redriven and marked.summary().endswith("(re-driven)")


def test_rebuild_renders_the_same_notification_or_says_why_not() -> None:
    cfg = config()
    letters = dead_letters(cfg, records())
    item = rebuild(cfg, letters[1])
    assert isinstance(item, Notification)
    assert (item.route, item.channel, item.to) == ("desk", "email", "lead@example.com")
    assert "T1" in item.body
    signup = rebuild(cfg, letters[6])
    assert isinstance(signup, Notification) and signup.subject.startswith("Welcome, Ada;")
    assert rebuild(cfg, letters[7]) == "reason decode_error is not re-drivable"
    # the config changed since: the route is gone, or no longer sends to that recipient
    without_desk = CONFIG.replace('name = "desk"', 'name = "desk2"')
    assert rebuild(config(without_desk), letters[0]) == "route 'desk' is not in the config"
    moved = CONFIG.replace('"lead@example.com"', '"boss@example.com"')
    assert rebuild(config(moved), letters[1]) == (
        "route 'desk' no longer sends email to lead@example.com"
    )


def run_redrive(
    cfg: NotifyConfig, entries: list[NotifierLetter], senders: dict[str, Switchable]
) -> tuple[RedriveResult, list[str]]:
    producer = FakeProducer()
    markers = MarkerWriter(producer, "notifier-dlq-redriven")  # type: ignore[arg-type]
    work = [(e, rebuild(cfg, e)) for e in entries]
    result = asyncio.run(_Redrive(dispatcher(cfg, senders), markers, 42).run(work))
    assert {t for t, _, _ in producer.produced} <= {"notifier-dlq-redriven"}
    for _, _key, value in producer.produced:
        assert json.loads(value)["redriven_at_ms"] == 42
    return result, [key.decode() for _, key, _ in producer.produced]


def test_redrive_sends_each_once_marks_only_the_sent_and_a_second_sends_nothing() -> None:
    cfg = config()
    letters = dead_letters(cfg, records())
    email, sms = Switchable(False), Switchable(True)  # SMTP fixed, the SMS gateway still down
    wanted = select(letters, set(), Selector())
    first, marked = run_redrive(cfg, wanted, {"email": email, "sms": sms})
    assert (first.sent, first.failed, first.not_redrivable) == (5, 2, 1)
    assert [(n.to, n.route) for n in email.sent] == [
        ("desk@example.com", "desk"), ("lead@example.com", "desk"),
        ("desk@example.com", "desk"), ("lead@example.com", "desk"),
        ("ada@example.com", "welcome"),
    ]  # fmt: skip
    assert marked == ["0:0", "0:1", "0:3", "0:4", "0:6"]  # not the failed SMS, not the bad one
    assert first.line().startswith("re-driven: 5 sent, 2 failed again (still dead-lettered), 1")
    assert first.first_error is not None and "T1/block: smtp connection failed" in first.line()
    # the second re-drive: the marked ones are not selected; the SMS ones go once it is back
    sms.down = False
    left = select(letters, set(marked), Selector())
    second, marked2 = run_redrive(cfg, left, {"email": email, "sms": sms})
    assert (second.sent, second.failed) == (2, 0) and len(email.sent) == 5
    assert [n.to for n in sms.sent] == ["+4915100000001", "+4915100000001"]
    third = select(letters, set(marked) | set(marked2), Selector())
    assert [e.letter.reason for e in third] == ["decode_error"]  # nothing left to send
    assert RedriveResult().line() == (
        "re-driven: 0 sent, 0 failed again (still dead-lettered), 0 not re-drivable"
    )
