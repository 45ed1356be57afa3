"""Notification routing (pure): config validation, templates, routing, rate limit, de-dup."""

from __future__ import annotations

import asyncio
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fraud.contracts.records import RawRecord
from fraud.settings import Settings
from fraud.sinks.notify.email import build_message
from fraud.sinks.notify.routing import (
    ConfigError,
    Deduper,
    EventError,
    Notification,
    NotifyConfig,
    RateLimiter,
    Secret,
    SendError,
    Skipped,
    alert_facts,
    decode_event,
    load_config,
    parse_config,
    plan,
    render,
)
from fraud.sinks.notify.service import Dispatcher, serve_notifier
from fraud.v1.alert_pb2 import Alert
from fraud.v1.decision_pb2 import Action, Decision, Reason

ENV = {"SMTP_PASSWORD": "hunter2", "SMS_TOKEN": "tok-123"}

BASE = """
rate_limit_per_minute = 10
dedupe_window_s = 600

[smtp]
host = "smtp.example.com"
port = 587
starttls = true
username = "alerts"
password_env = "SMTP_PASSWORD"
sender = "Fraud Desk <fraud@example.com>"

[sms]
url = "https://sms.example.com/send"
token_env = "SMS_TOKEN"
timeout_s = 3

[recipients]
C1 = { email = "c1@example.com", sms = "+4915100000001" }
C2 = "c2@example.com"
"""

ROUTES = """
[[route]]
name = "desk"
topic = "alerts"
channel = "email"
types = ["fraud.review", "fraud.block"]
to = ["desk@example.com", "lead@example.com"]

[[route]]
name = "customer-sms"
topic = "alerts"
channel = "sms"
types = ["fraud.block"]

[[route]]
name = "welcome"
topic = "user-signups"
format = "json"
channel = "email"
to_field = "email"
template = "welcome"
dedupe_key = "user_id"
rate_limit_per_minute = 0

[templates.welcome]
subject = "Welcome, ${name}!"
body = "Hi ${name}, your plan is ${plan}. Cost: $$0."
"""


def config(extra: str = ROUTES, base: str = BASE, env: dict[str, str] = ENV) -> NotifyConfig:
    return parse_config(tomllib.loads(base + extra), env)


def make_alert(
    customer: str = "C1",
    kind: str = "block",
    amount_minor: int = 123456,
    currency: str = "EUR",
    tx: str = "T1",
) -> Alert:
    action = {"block": Action.BLOCK, "review": Action.REVIEW}[kind]
    return Alert(
        alert_id=f"{tx}/{kind}",
        type=f"fraud.{kind}",
        created_at_ms=1_764_072_000_500,
        decision=Decision(
            transaction_id=tx,
            customer_id=customer,
            terminal_id="TERM9",
            amount_minor=amount_minor,
            currency=currency,
            event_time_ms=1_764_072_000_000,
            action=action,
            score=0.91234,
            rules_fired=["amount_over_threshold", "velocity_1h"],
            reasons=[
                Reason(code="amount_over_threshold", feature="amount", value=1234.56),
                Reason(code="velocity_1h"),
            ],
        ),
    )


def test_config_parses_routes_defaults_and_secrets() -> None:
    cfg = config()
    assert [r.name for r in cfg.routes] == ["desk", "customer-sms", "welcome"]
    desk, sms, welcome = cfg.routes
    assert desk.format == "alert" and desk.to == ("desk@example.com", "lead@example.com")
    assert desk.rate_limit_per_minute == 10 and desk.dedupe_window_s == 600
    # an alert route with no recipients goes to the customer via [recipients]
    assert sms.to_field == "customer_id" and sms.lookup_recipients
    assert welcome.rate_limit_per_minute == 0
    assert cfg.topics == ("alerts", "user-signups")
    assert cfg.recipients["C2"] == {"email": "c2@example.com", "sms": "c2@example.com"}
    assert cfg.smtp is not None and cfg.smtp.password == Secret("hunter2")
    assert cfg.sms is not None and cfg.sms.token is not None
    assert cfg.sms.token.reveal() == "tok-123" and cfg.sms.timeout_s == 3
    text = repr(cfg)
    assert "hunter2" not in text and "tok-123" not in text and "***" in text


def test_load_config_from_file(tmp_path: Path) -> None:
    path = tmp_path / "notifier.toml"
    path.write_text(BASE + ROUTES)
    assert len(load_config(path, ENV).routes) == 3
    path.write_text("[[route]\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path, ENV)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml", ENV)


@pytest.mark.parametrize(
    ("extra", "env", "message"),
    [
        (ROUTES, {"SMS_TOKEN": "x"}, "environment variable SMTP_PASSWORD is not set"),
        ("", ENV, "at least one"),
        ('[[route]]\ntopic = "alerts"\nchannel = "fax"\n', ENV, "channel: must be one of"),
        (
            '[[route]]\ntopic = "alerts"\nchannel = "email"\nformat = "xml"\n',
            ENV,
            "format: must be one of",
        ),
        ('[[route]]\ntopic = "x"\nchannel = "email"\nformat = "json"\nto = "a@b.io"\n', ENV,
         "template: required"),
        ('[[route]]\ntopic = "x"\nchannel = "email"\nformat = "json"\ntemplate = "nope"\n'
         'to = "a@b.io"\n', ENV, "no template 'nope'"),
        ('[[route]]\ntopic = "x"\nchannel = "email"\nformat = "json"\ntemplate = "fraud.block"\n',
         ENV, "needs to"),
        ('[[route]]\ntopic = "alerts"\nchannel = "email"\nto = "not-an-address"\n', ENV,
         "not a valid email"),
        ('[[route]]\ntopic = "alerts"\nchannel = "email"\nto = "a@b.io"\nto_field = "x"\n', ENV,
         "either to or to_field"),
        ('[[route]]\ntopic = "alerts"\nchannel = "email"\nto = "a@b.io"\nsubjet = "x"\n', ENV,
         "unknown key"),
        ('[[route]]\ntopic = "alerts"\nchannel = "email"\nto = "a@b.io"\n'
         'rate_limit_per_minute = -1\n', ENV, "must be >= 0"),
        ('[[route]]\nname = "a"\ntopic = "alerts"\nchannel = "email"\nto = "a@b.io"\n'
         '[[route]]\nname = "a"\ntopic = "alerts"\nchannel = "sms"\nto = "+1"\n', ENV,
         "duplicate route"),
        # a placeholder that no alert has: detectable, so refused at load
        ('[[route]]\ntopic = "alerts"\nchannel = "email"\nto = "a@b.io"\ntemplate = "t"\n'
         '[templates.t]\nsubject = "x"\nbody = "${amount} ${ammount}"\n', ENV,
         r"unknown alert field\(s\) \$\{ammount\}"),
        ('[[route]]\ntopic = "alerts"\nchannel = "email"\nto = "a@b.io"\ntemplate = "t"\n'
         '[templates.t]\nsubject = "x"\nbody = "${amount"\n', ENV, "invalid placeholder"),
        ('[[route]]\ntopic = "alerts"\nchannel = "email"\nto = "a@b.io"\ntemplate = "t"\n'
         '[templates.t]\nbody = "x"\n', ENV, "needs a subject"),
        ('[[route]]\ntopic = "alerts"\nchannel = "email"\nto = "a@b.io"\ndedupe_key = "x"\n',
         ENV, "dedupe_key"),
    ],
)  # fmt: skip
def test_config_errors(extra: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config(extra, env=env)


def test_channel_needs_its_server_table() -> None:
    route = '[[route]]\ntopic = "alerts"\nchannel = "sms"\nto = "+1"\n'
    with pytest.raises(ConfigError, match=r"needs an \[sms\] table"):
        parse_config(tomllib.loads(route), {})
    route = '[[route]]\ntopic = "alerts"\nchannel = "email"\nto = "a@b.io"\n'
    with pytest.raises(ConfigError, match=r"needs an \[smtp\] table"):
        parse_config(tomllib.loads(route), {})
    with pytest.raises(ConfigError, match="password_env is not"):
        parse_config(tomllib.loads('[smtp]\nhost="h"\nsender="a@b.io"\nusername="u"\n' + route))


def test_alert_facts_amount_time_rules_reasons() -> None:
    facts = alert_facts(make_alert())
    assert facts["amount"] == "1234.56" and facts["currency"] == "EUR"
    assert facts["event_time"] == "2025-11-25T12:00:00Z"
    assert facts["created_at"] == "2025-11-25T12:00:00.500Z"
    assert facts["action"] == "BLOCK" and facts["score"] == "0.912"
    assert facts["rules"] == "amount_over_threshold, velocity_1h"
    assert facts["reasons"] == "amount_over_threshold (amount=1234.56); velocity_1h"
    assert alert_facts(make_alert(amount_minor=5000, currency="JPY"))["amount"] == "5000"
    assert alert_facts(make_alert(amount_minor=5, currency="BHD"))["amount"] == "0.005"


def test_builtin_templates_render_alerts() -> None:
    cfg = config()
    desk = cfg.routes[0]
    event = decode_event("alert", make_alert(kind="review").SerializeToString())
    out = render(cfg.template(desk, event.type), event.facts)
    assert out.subject == "Review needed: 1234.56 EUR at TERM9 (score 0.912)"
    assert "Reasons:     amount_over_threshold (amount=1234.56); velocity_1h" in out.body
    assert out.missing == ()
    event = decode_event("alert", make_alert(kind="block").SerializeToString())
    assert render(cfg.template(desk, event.type), event.facts).subject.startswith("Blocked:")


def test_json_template_missing_field_stays_visible_and_subject_is_one_line() -> None:
    cfg = config()
    welcome = cfg.routes[2]
    event = decode_event("json", json.dumps({"name": "Ann\r\nBcc: x@evil.io"}).encode())
    out = render(cfg.template(welcome, event.type), event.facts)
    assert out.subject == "Welcome, Ann Bcc: x@evil.io!"
    assert out.body == "Hi Ann\r\nBcc: x@evil.io, your plan is ${plan}. Cost: $0."
    assert out.missing == ("plan",)


def test_plan_routes_by_topic_type_and_recipient() -> None:
    cfg = config()
    alerts = [r for r in cfg.routes if r.topic == "alerts"]
    block = decode_event("alert", make_alert("C1", "block").SerializeToString())
    got = plan(cfg, alerts, block)
    assert all(isinstance(n, Notification) for n in got)
    assert [(n.route, n.channel, n.to) for n in got if isinstance(n, Notification)] == [
        ("desk", "email", "desk@example.com"),
        ("desk", "email", "lead@example.com"),
        ("customer-sms", "sms", "+4915100000001"),
    ]
    first = got[0]
    assert isinstance(first, Notification)
    assert first.dedupe_key == ("desk", "desk@example.com", "C1", "fraud.block")
    # review alerts: only the desk route's type filter matches
    review = decode_event("alert", make_alert("C1", "review").SerializeToString())
    assert {n.route for n in plan(cfg, alerts, review)} == {"desk"}
    # a customer without a phone number: the route is skipped with the reason
    c3 = decode_event("alert", make_alert("C3", "block").SerializeToString())
    skipped = [n for n in plan(cfg, alerts, c3) if isinstance(n, Skipped)]
    assert skipped == [Skipped("customer-sms", "no_recipient: no sms for 'C3'")]


def test_plan_json_types_filter_dotted_to_field_and_dedupe_key() -> None:
    cfg = config(
        '[[route]]\nname = "r"\ntopic = "events"\nformat = "json"\nchannel = "sms"\n'
        'types = ["signup"]\nto_field = "contact.phone"\ntemplate = "t"\ndedupe_key = "user.id"\n'
        '[templates.t]\nbody = "hello ${user}"\n'
    )
    route = cfg.routes[0]
    doc: dict[str, Any] = {"type": "signup", "contact": {"phone": "+15550100"}, "user": {"id": 7}}
    got = plan(cfg, [route], decode_event("json", json.dumps(doc).encode()))
    assert len(got) == 1 and isinstance(got[0], Notification)
    assert got[0].to == "+15550100" and got[0].dedupe_key == ("r", "+15550100", "7", "signup")
    assert got[0].body == 'hello {"id": 7}'
    assert plan(cfg, [route], decode_event("json", b'{"type": "login"}')) == []
    assert plan(cfg, [route], decode_event("json", b'{"contact": {}}')) == []  # no type
    none = plan(cfg, [route], decode_event("json", b'{"type": "signup", "contact": {}}'))
    assert none == [Skipped("r", "no_recipient: field 'contact.phone' is empty")]
    bad = {"type": "signup", "contact": {"phone": "+1, +2"}}
    assert isinstance(
        plan(cfg, [route], decode_event("json", json.dumps(bad).encode()))[0], Skipped
    )


@pytest.mark.parametrize(
    ("fmt", "value", "message"),
    [
        ("json", b"", "empty"),
        ("json", b"{not json", "not JSON"),
        ("json", b"[1, 2]", "not a JSON object"),
        ("alert", b"\xff\xff\xff", "not a fraud.v1.Alert"),
        ("alert", b'{"alert_id": 1}', "not a fraud.v1.Alert"),
    ],
)
def test_decode_errors(fmt: Any, value: bytes, message: str) -> None:
    with pytest.raises(EventError, match=message):
        decode_event(fmt, value)


def test_rate_limiter_token_bucket_with_fake_clock() -> None:
    limiter = RateLimiter(per_minute=2)
    t = 1000.0
    assert limiter.allow("a", t) and limiter.allow("a", t)
    assert not limiter.allow("a", t + 1)  # bucket empty
    assert limiter.allow("b", t + 1)  # per recipient
    assert not limiter.allow("a", t + 29)  # 0.93 tokens refilled
    assert limiter.allow("a", t + 31)  # one token after 30 s
    assert not limiter.allow("a", t + 31)
    assert limiter.allow("a", t + 1000) and limiter.allow("a", t + 1000)  # capped at 2
    assert not limiter.allow("a", t + 1000)
    assert all(RateLimiter(0).allow("a", t) for _ in range(100))  # 0 disables


def test_rate_limiter_forgets_idle_recipients() -> None:
    limiter = RateLimiter(per_minute=60)
    for i in range(1023):
        limiter.allow(f"r{i}", 0.0)
    assert len(limiter) == 1023
    limiter.allow("late", 120.0)  # the 1024th check sweeps refilled buckets
    assert len(limiter) == 1


def test_deduper_window_with_fake_clock() -> None:
    dedupe = Deduper(window_s=60)
    key = ("route", "to", "C1", "fraud.block")
    assert not dedupe.is_duplicate(key, 0.0)
    dedupe.record(key, 0.0)
    assert dedupe.is_duplicate(key, 59.9)
    assert not dedupe.is_duplicate(("route", "to", "C1", "fraud.review"), 10.0)
    assert not dedupe.is_duplicate(key, 60.0)
    assert not dedupe.is_duplicate(None, 1.0)
    assert not Deduper(0).is_duplicate(key, 0.0)


def test_email_message_headers() -> None:
    cfg = config()
    assert cfg.smtp is not None
    n = Notification("desk", "email", "desk@example.com", "Blocked: 1.00 EUR", "body €", None)
    msg = build_message(cfg.smtp, n)
    assert msg["To"] == "desk@example.com" and msg["Subject"] == "Blocked: 1.00 EUR"
    assert msg["From"] == "Fraud Desk <fraud@example.com>"
    assert msg["Message-ID"].endswith("@example.com>")
    assert msg.get_content().strip() == "body €"


class FakeSender:
    """Fails with the given errors first, then succeeds; records what it sent."""

    def __init__(self, errors: list[SendError]) -> None:
        self.errors = errors
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(notification)

    async def close(self) -> None:
        pass


def dispatcher(sender: FakeSender, extra: str = "") -> tuple[Dispatcher, list[float]]:
    cfg = config(
        '[delivery]\nattempts = 3\nbackoff_s = 1\nmax_backoff_s = 1.5\nbreaker_failures = 2\n'
        'breaker_reset_s = 60\n'
        '[[route]]\nname = "desk"\ntopic = "alerts"\nchannel = "email"\nto = "d@example.com"\n'
        + extra,
        base=BASE.split("[sms]")[0],
    )  # fmt: skip
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    clock = [0.0]
    d = Dispatcher(cfg, {"email": sender}, clock=lambda: clock[0], monotonic=lambda: clock[0],
                   sleep=sleep)  # fmt: skip
    return d, sleeps


def record(value: bytes) -> RawRecord:
    return RawRecord(b"C1", value, "alerts", 0, 1, 0)


def test_dispatcher_retries_with_backoff_then_succeeds() -> None:
    sender = FakeSender([SendError("down", retryable=True), SendError("slow", retryable=True,
                                                                      retry_after=9)])  # fmt: skip
    d, sleeps = dispatcher(sender)
    letters = asyncio.run(d.handle(d.config.routes, record(make_alert().SerializeToString())))
    assert letters == [] and len(sender.sent) == 1
    assert sleeps == [1.0, 1.5]  # 1 s, then 2 s capped at 1.5 (Retry-After capped as well)
    assert d.stats.sent == 1 and d.stats.retries == 2


def test_dispatcher_gives_up_and_the_breaker_opens() -> None:
    errors = [SendError("refused", retryable=True) for _ in range(6)]
    sender = FakeSender(errors)
    d, _ = dispatcher(sender)
    value = record(make_alert().SerializeToString())
    first = asyncio.run(d.handle(d.config.routes, value))
    assert [(lt.reason, lt.detail.split(";")[0]) for lt in first] == [
        ("send_failed", "refused (after 3 attempts)")
    ]
    assert "attempts=3" in first[0].detail
    assert (first[0].source_topic, first[0].source_offset, first[0].key) == ("alerts", 1, b"C1")
    asyncio.run(d.handle(d.config.routes, value))
    third = asyncio.run(d.handle(d.config.routes, value))  # 2 failures: breaker open
    # the last real failure, not the breaker, is the cause; the breaker's state follows
    assert third[0].detail.startswith("refused (last failure; circuit open: email failed 2 times)")
    assert len(errors) == 0 and d.stats.failed == 3
    # a permanent error is not retried
    sender2 = FakeSender([SendError("550 no such user", retryable=False)])
    d2, sleeps = dispatcher(sender2)
    [letter] = asyncio.run(d2.handle(d2.config.routes, value))
    assert letter.detail.startswith("550 no such user;") and "attempts=1" in letter.detail
    assert sleeps == []


def test_serve_notifier_refuses_a_bad_config(tmp_path: Path, capsys: Any) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[route]]\ntopic = "alerts"\nchannel = "pager"\n')
    assert serve_notifier(Settings(), path) == 2
    assert "channel: must be one of" in capsys.readouterr().err
