"""The notifier end to end: real SMTP and SMS gateway servers, events through the broker."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiosmtpd.controller import Controller

from fraud.broker import TopicSpec, ensure_topics, free_port
from fraud.contracts.dead_letter import DeadLetter, dead_letter_headers, decode_dead_letter
from fraud.settings import Settings
from fraud.sinks.notify import dlq
from fraud.sinks.notify.routing import load_config
from fraud.sinks.notify.service import NotifierStats, dlq_topic, run_notifier
from fraud.v1.alert_pb2 import Alert
from fraud.v1.decision_pb2 import Action, Decision, Reason

pytestmark = pytest.mark.timeout(30)

TOKEN = "sms-secret-token"


class Mailbox:
    """aiosmtpd handler that keeps every message it accepts."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: list[tuple[list[str], EmailMessage]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        with self._lock:
            self._messages.append((list(envelope.rcpt_tos), msg))
        return "250 Message accepted"

    @property
    def messages(self) -> list[tuple[list[str], EmailMessage]]:
        with self._lock:
            return list(self._messages)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for rcpt, m in self.messages if rcpt == [address]]


@dataclass
class Gateway:
    """An SMS gateway: records JSON posts; answers ``fail_first`` of them with 503."""

    port: int
    fail_first: int = 0
    posts: list[dict[str, Any]] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)
    calls: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.calls += 1
        if self.calls <= self.fail_first:
            return web.json_response({"error": "busy"}, status=503)
        self.auth.append(request.headers.get("Authorization"))
        self.posts.append(await request.json())
        return web.json_response({"status": "queued"})


@contextlib.asynccontextmanager
async def sms_gateway(fail_first: int = 0) -> AsyncIterator[Gateway]:
    gw = Gateway(free_port(), fail_first)
    app = web.Application()
    app.router.add_post("/send", gw.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", gw.port).start()
    try:
        yield gw
    finally:
        await runner.cleanup()


def smtp_server(mailbox: Mailbox, port: int) -> Controller:
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    return controller


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


async def wait_for(cond: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def notifier(
    settings: Settings, config: Path, clock: Callable[[], float] = time.time
) -> AsyncIterator[NotifierStats]:
    stats = NotifierStats()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_notifier(settings, config, stop=stop, ready=ready, clock=clock, stats=stats)
    )
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # raises the notifier's error
    assert ready.is_set(), "notifier not ready within 10 s"
    try:
        yield stats
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@contextlib.asynccontextmanager
async def producer(settings: Settings) -> AsyncIterator[AIOKafkaProducer]:
    prod = AIOKafkaProducer(bootstrap_servers=settings.brokers)
    await prod.start()
    try:
        yield prod
    finally:
        await prod.stop()


def make_alert(
    tx: str, customer: str, kind: str = "block", amount_minor: int = 31415, currency: str = "EUR"
) -> Alert:
    return Alert(
        alert_id=f"{tx}/{kind}",
        type=f"fraud.{kind}",
        created_at_ms=1_764_072_000_000,
        decision=Decision(
            transaction_id=tx,
            customer_id=customer,
            terminal_id="TERM42",
            amount_minor=amount_minor,
            currency=currency,
            event_time_ms=1_764_072_000_000,
            action=Action.BLOCK if kind == "block" else Action.REVIEW,
            score=0.97,
            rules_fired=["amount_over_threshold"],
            reasons=[Reason(code="amount_over_threshold", feature="amount", value=314.15)],
        ),
    )


async def send_alert(prod: AIOKafkaProducer, settings: Settings, alert: Alert) -> None:
    await prod.send_and_wait(
        settings.topic_names.alerts,
        alert.SerializeToString(),
        key=alert.decision.customer_id.encode(),
    )


async def send_json(prod: AIOKafkaProducer, topic: str, event: dict[str, Any]) -> None:
    await prod.send_and_wait(
        topic, json.dumps(event).encode(), key=str(event.get("user_id")).encode()
    )


async def read_dlq(settings: Settings, count: int) -> list[DeadLetter]:
    """The first ``count`` dead letters; each record's headers are those of its letter."""
    consumer = AIOKafkaConsumer(
        dlq_topic(settings), bootstrap_servers=settings.brokers, auto_offset_reset="earliest"
    )
    await consumer.start()
    out: list[DeadLetter] = []
    try:
        deadline = time.monotonic() + 10
        while len(out) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for r in records:
                    letter = decode_dead_letter(r.value)
                    assert list(r.headers) == dead_letter_headers(letter)
                    out.append(letter)
    finally:
        await consumer.stop()
    return out


def signups_topic(settings: Settings) -> str:
    topic = f"{settings.topic_prefix}user-signups"
    ensure_topics(settings, extra=[TopicSpec(topic, 2, {})])
    return topic


def write_config(path: Path, smtp_port: int, sms_port: int | None, routes: str) -> Path:
    sms = (
        f'[sms]\nurl = "http://127.0.0.1:{sms_port}/send"\ntoken_env = "SMS_TOKEN"\ntimeout_s = 2\n'
        if sms_port is not None
        else ""
    )
    path.write_text(
        f"""
[smtp]
host = "127.0.0.1"
port = {smtp_port}
starttls = false
sender = "Fraud Desk <fraud@example.com>"
timeout_s = 2

{sms}
[delivery]
attempts = 2
backoff_s = 0.05
max_backoff_s = 0.2

[recipients]
C1 = {{ email = "c1@example.com", sms = "+4915100000001" }}
C2 = {{ email = "c2@example.com", sms = "+4915100000002" }}

{routes}
"""
    )
    return path


ALERT_ROUTES = """
[[route]]
name = "desk"
topic = "alerts"
format = "alert"
channel = "email"
types = ["fraud.review", "fraud.block"]
to = ["desk@example.com"]

[[route]]
name = "customer-sms"
topic = "alerts"
channel = "sms"
types = ["fraud.block"]
"""


@pytest.fixture(autouse=True)
def sms_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMS_TOKEN", TOKEN)


def test_alerts_become_emails_and_sms(settings: Settings, tmp_path: Path) -> None:
    async def main() -> None:
        mailbox = Mailbox()
        controller = smtp_server(mailbox, free_port())
        try:
            async with sms_gateway() as gw:
                config = write_config(tmp_path / "n.toml", controller.port, gw.port, ALERT_ROUTES)
                async with notifier(settings, config) as stats, producer(settings) as prod:
                    await send_alert(prod, settings, make_alert("T1", "C1", "review"))
                    await send_alert(prod, settings, make_alert("T2", "C2", "block", 500, "JPY"))
                    await wait_for(lambda: stats.sent == 3, "2 emails and 1 SMS")
                    assert stats.received == 2 and stats.failed == 0
                subjects = sorted(str(m["Subject"]) for m in mailbox.to("desk@example.com"))
                assert subjects == [
                    "Blocked: 500 JPY at TERM42 (score 0.970)",
                    "Review needed: 314.15 EUR at TERM42 (score 0.970)",
                ]
                review = next(m for m in mailbox.to("desk@example.com") if "T1" in str(m))
                body = review.get_content()
                assert "Amount:      314.15 EUR" in body
                assert "Reasons:     amount_over_threshold (amount=314.15)" in body
                assert "Time:        2025-11-25T12:00:00Z" in body
                assert str(review["From"]) == "Fraud Desk <fraud@example.com>"
                # the block alert also went to the customer's phone, with the bearer token
                assert len(gw.posts) == 1 and gw.posts[0]["to"] == "+4915100000002"
                assert "Amount:      500 JPY" in gw.posts[0]["text"]
                assert gw.auth == [f"Bearer {TOKEN}"]
        finally:
            controller.stop()

    asyncio.run(main())


def test_welcome_email_on_user_signup(settings: Settings, tmp_path: Path) -> None:
    """The classic case: a welcome email when a user signs up, by config only."""
    topic = signups_topic(settings)
    routes = f"""
[[route]]
name = "welcome"
topic = "{topic}"
format = "json"
channel = "email"
to_field = "email"
template = "welcome"

[templates.welcome]
subject = "Welcome to Example, ${{name}}!"
body = "Hi ${{name}},\\n\\nthanks for signing up (user ${{user_id}}, plan ${{plan}})."
"""

    async def main() -> None:
        mailbox = Mailbox()
        controller = smtp_server(mailbox, free_port())
        try:
            config = write_config(tmp_path / "n.toml", controller.port, None, routes)
            async with notifier(settings, config) as stats, producer(settings) as prod:
                await send_json(
                    prod, topic, {"user_id": 7, "email": "ann@example.org", "name": "Ann"}
                )
                await send_json(prod, topic, {"user_id": 8, "name": "No Email"})
                await wait_for(lambda: stats.handled == 2, "both signups handled")
                assert stats.sent == 1 and stats.skipped == 1
            [(rcpt, msg)] = mailbox.messages
            assert rcpt == ["ann@example.org"] and msg["To"] == "ann@example.org"
            assert msg["Subject"] == "Welcome to Example, Ann!"
            # an unknown placeholder of a JSON event stays visible rather than failing
            assert msg.get_content().replace("\r\n", "\n").strip() == (
                "Hi Ann,\n\nthanks for signing up (user 7, plan ${plan})."
            )
            [letter] = await read_dlq(settings, 1)
            assert letter.reason == "no_recipient"
            assert letter.detail == "no_recipient: field 'email' is empty; route=welcome"
            assert letter.source_topic == topic and b'"No Email"' in letter.payload
        finally:
            controller.stop()

    asyncio.run(main())


def test_dedupe_window_with_injected_clock(settings: Settings, tmp_path: Path) -> None:
    routes = """
[[route]]
name = "desk"
topic = "alerts"
channel = "email"
to = "desk@example.com"
dedupe_window_s = 600
"""
    clock = FakeClock()

    async def main() -> None:
        mailbox = Mailbox()
        controller = smtp_server(mailbox, free_port())
        try:
            config = write_config(tmp_path / "n.toml", controller.port, None, routes)
            async with notifier(settings, config, clock) as stats, producer(settings) as prod:
                await send_alert(prod, settings, make_alert("T1", "C1", "block"))
                await send_alert(prod, settings, make_alert("T2", "C1", "block"))
                await wait_for(lambda: stats.handled == 2, "two alerts handled")
                assert stats.sent == 1 and stats.deduplicated == 1
                # another type of the same customer is not a duplicate
                clock.now += 60
                await send_alert(prod, settings, make_alert("T3", "C1", "review"))
                await wait_for(lambda: stats.handled == 3, "review alert handled")
                assert stats.sent == 2
                # after the window, the same customer and type notify again
                clock.now += 600
                await send_alert(prod, settings, make_alert("T4", "C1", "block"))
                await wait_for(lambda: stats.handled == 4, "late alert handled")
                assert stats.sent == 3 and stats.deduplicated == 1
            got = mailbox.to("desk@example.com")
            assert [str(m["Subject"]).split(":")[0] for m in got] == [
                "Blocked",
                "Review needed",
                "Blocked",
            ]
            assert ["T1" in got[0].get_content(), "T4" in got[2].get_content()] == [True, True]
        finally:
            controller.stop()

    asyncio.run(main())


def test_rate_limit_per_recipient(settings: Settings, tmp_path: Path) -> None:
    topic = signups_topic(settings)
    routes = f"""
[[route]]
name = "ops"
rate_limit_per_minute = 2
topic = "{topic}"
format = "json"
channel = "email"
to = "ops@example.com"
template = "signup"

[templates.signup]
subject = "New user ${{user_id}}"
body = "${{name}} signed up"
"""
    clock = FakeClock()

    async def main() -> None:
        mailbox = Mailbox()
        controller = smtp_server(mailbox, free_port())
        try:
            config = write_config(tmp_path / "n.toml", controller.port, None, routes)
            async with notifier(settings, config, clock) as stats, producer(settings) as prod:
                for uid in (1, 2, 3):
                    await send_json(prod, topic, {"user_id": uid, "name": f"u{uid}"})
                await wait_for(lambda: stats.handled == 3, "three signups handled")
                assert stats.sent == 2 and stats.rate_limited == 1
                clock.now += 30  # one token back
                await send_json(prod, topic, {"user_id": 4, "name": "u4"})
                await wait_for(lambda: stats.handled == 4, "fourth signup handled")
                assert stats.sent == 3 and stats.rate_limited == 1
            assert len(mailbox.to("ops@example.com")) == 3
        finally:
            controller.stop()

    asyncio.run(main())


def test_smtp_down_dead_letters_and_notifier_keeps_going(
    settings: Settings, tmp_path: Path
) -> None:
    smtp_port = free_port()  # nothing listens here yet

    async def main() -> None:
        mailbox = Mailbox()
        async with sms_gateway(fail_first=1) as gw:
            config = write_config(tmp_path / "n.toml", smtp_port, gw.port, ALERT_ROUTES)
            async with notifier(settings, config) as stats, producer(settings) as prod:
                await prod.send_and_wait(settings.topic_names.alerts, b"\xffnot protobuf")
                await send_alert(prod, settings, make_alert("T1", "C1", "block"))
                await wait_for(lambda: stats.handled == 2, "both messages handled")
                # the SMS went out (after one retry of the gateway's 503), the email did not
                assert stats.sent == 1 and stats.failed == 1 and stats.undecodable == 1
                assert stats.retries == 2  # one per channel
                assert [p["to"] for p in gw.posts] == ["+4915100000001"]
                letters = await read_dlq(settings, 2)
                by_reason = {lt.reason: lt for lt in letters}
                assert set(by_reason) == {"decode_error", "send_failed"}
                assert by_reason["decode_error"].payload == b"\xffnot protobuf"
                failed = by_reason["send_failed"]
                assert failed.detail.startswith("smtp connection failed")
                assert "route=desk channel=email to=desk@example.com" in failed.detail
                assert "attempts=2 subject='Blocked: 314.15 EUR" in failed.detail
                assert failed.source_topic == settings.topic_names.alerts
                assert failed.key == b"C1"
                # the server comes back: the next alerts are delivered
                controller = smtp_server(mailbox, smtp_port)
                try:
                    await send_alert(prod, settings, make_alert("T2", "C2", "block"))
                    await wait_for(lambda: stats.sent == 3, "email and SMS of T2")
                    assert stats.failed == 1
                finally:
                    controller.stop()
            [(rcpt, msg)] = mailbox.messages
            assert rcpt == ["desk@example.com"] and "T2" in msg.get_content()

    asyncio.run(main())


def test_restart_resumes_from_committed_offset(settings: Settings, tmp_path: Path) -> None:
    topic = signups_topic(settings)
    routes = f"""
[[route]]
topic = "{topic}"
format = "json"
channel = "email"
to_field = "email"
template = "hi"

[templates.hi]
subject = "Hi ${{name}}"
body = "Hello"
"""

    async def main() -> None:
        mailbox = Mailbox()
        controller = smtp_server(mailbox, free_port())
        try:
            config = write_config(tmp_path / "n.toml", controller.port, None, routes)
            async with producer(settings) as prod:
                await send_json(prod, topic, {"user_id": 1, "email": "a@example.org", "name": "A"})
                async with notifier(settings, config) as stats:
                    await wait_for(lambda: stats.sent == 1, "first email")
                await send_json(prod, topic, {"user_id": 2, "email": "b@example.org", "name": "B"})
                async with notifier(settings, config) as stats:
                    await wait_for(lambda: stats.sent == 1, "second email")
                    assert stats.received == 1  # the first one was committed
            assert sorted(r[0] for r, _ in mailbox.messages) == ["a@example.org", "b@example.org"]
        finally:
            controller.stop()

    asyncio.run(main())


REDRIVE_ROUTES = """
[[route]]
name = "desk"
topic = "alerts"
format = "alert"
channel = "email"
to = ["desk@example.com", "lead@example.com"]
"""


def fraud_dlq(settings: Settings, *args: str) -> tuple[int, list[str]]:
    """``fraud dlq ... --sink notifier`` in a child process: its exit code and stdout lines."""
    done = subprocess.run(
        [sys.executable, "-m", "fraud", "dlq", *args, "--sink", "notifier",
         "--brokers", settings.brokers, "--topic-prefix", settings.topic_prefix],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, done.stdout.splitlines()


def mails(mailbox: Mailbox) -> list[tuple[str, str]]:
    """(recipient, alert id) of every message received, repeats included."""
    out = []
    for rcpt, msg in mailbox.messages:
        [alert_id] = [line.split()[-1] for line in msg.get_content().splitlines()
                      if line.startswith("Alert:")]  # fmt: skip
        out.append((rcpt[0], alert_id))
    return sorted(out)


@pytest.mark.timeout(120)
def test_smtp_down_dead_letters_are_redriven_once_smtp_is_back(
    settings: Settings, tmp_path: Path
) -> None:
    smtp_port = free_port()  # nothing listens here: SMTP is down
    config = write_config(tmp_path / "n.toml", smtp_port, None, REDRIVE_ROUTES)
    alerts = [make_alert(f"T{i}", f"C{i}") for i in (1, 2, 3)]

    async def outage() -> None:
        async with notifier(settings, config) as stats, producer(settings) as prod:
            for alert in alerts:
                await send_alert(prod, settings, alert)
            await wait_for(lambda: stats.handled == 3 and stats.dead_letters == 6, "6 letters")
            assert stats.sent == 0 and stats.failed == 6

    asyncio.run(outage())
    code, listed = fraud_dlq(settings, "list")
    assert code == 0 and listed[-1] == "6 dead letters"
    assert all(" email " in line and "reason=send_failed" in line for line in listed[:-1])
    entries = dlq.list_dead_letters(settings)
    assert sorted((e.recipient, e.event_id) for e in entries) == sorted(
        (to, f"T{i}/block") for i in (1, 2, 3) for to in ("desk@example.com", "lead@example.com")
    )
    assert all(e.cause.startswith("smtp connection failed") for e in entries)

    mailbox = Mailbox()
    controller = smtp_server(mailbox, smtp_port)  # SMTP is fixed
    try:
        one = dlq.redrive(settings, load_config(config), dlq.Selector(event_id="T2/block"))
        assert (one.sent, one.failed, one.not_redrivable) == (2, 0, 0)
        assert mails(mailbox) == [
            ("desk@example.com", "T2/block"),
            ("lead@example.com", "T2/block"),
        ]
        code, out = fraud_dlq(settings, "redrive", "--recipient", "lead@example.com",
                              "--config", str(config))  # fmt: skip
        assert (code, out) == (0, ["re-driven: 2 sent, 0 failed again (still dead-lettered), "
                                   "0 not re-drivable"])  # fmt: skip
        code, out = fraud_dlq(settings, "redrive", "--all", "--config", str(config))
        assert code == 0 and out[0].startswith("re-driven: 2 sent, 0 failed")
        # each dead-lettered mail received exactly once
        want = sorted((to, f"T{i}/block") for i in (1, 2, 3)
                      for to in ("desk@example.com", "lead@example.com"))  # fmt: skip
        assert mails(mailbox) == want
        # a second re-drive sends nothing
        code, out = fraud_dlq(settings, "redrive", "--all", "--config", str(config))
        assert code == 0 and out[0].startswith("re-driven: 0 sent, 0 failed")
        assert mails(mailbox) == want
        code, listed = fraud_dlq(settings, "list")
        assert listed == ["0 dead letters"]
        code, listed = fraud_dlq(settings, "list", "--include-redriven")
        assert len(listed) == 7 and all(line.endswith("(re-driven)") for line in listed[:-1])
    finally:
        controller.stop()
