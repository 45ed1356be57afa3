"""Sink metrics: the webhook sink through the broker, scraped over HTTP while it runs; the
notifier's dispatcher with a fake sender; the ``--metrics-port`` flag of the sink commands.

Each test builds its metrics on a fresh ``CollectorRegistry`` and passes them in, so counts
are exact whatever else ran in the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import tomllib
import urllib.request
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from fraud import cli
from fraud.broker import free_port
from fraud.metrics import NotifierMetrics, WebhookMetrics, serve_metrics
from fraud.settings import Settings
from fraud.sinks.notify.routing import Notification, SendError, parse_config
from fraud.sinks.notify.service import Dispatcher
from fraud.sinks.retry import RetryPolicy
from fraud.sinks.webhooks.service import WebhookStats, run_webhooks
from fraud.sinks.webhooks.signing import EVENT_ID_HEADER
from fraud.v1.alert_pb2 import Alert
from fraud.v1.decision_pb2 import Action, Decision

SECRET = "whsec-metrics"
FAST = RetryPolicy(delays=(0.2, 0.5), jitter=0.0)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


# ---------------------------------------------------------------- scraping


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def sample(samples: Samples, name: str, **labels: str) -> float:
    """The value of one series; 0 when it is not there (a labelled series not used yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape_until(
    url: str, condition: Callable[[Samples], bool], what: str, timeout: float = 20.0
) -> Samples:
    deadline = time.monotonic() + timeout
    while True:
        samples = await asyncio.to_thread(scrape, url)
        if condition(samples):
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- webhook receiver


@dataclass
class Receiver:
    """/ok answers 200; /flaky 503 twice per event id, then 200; /bad 400."""

    port: int = field(default_factory=free_port)
    statuses: dict[str, Tally[int]] = field(default_factory=dict)
    seen: Tally[tuple[str, str]] = field(default_factory=Tally)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, request: web.Request) -> web.Response:
        await request.read()
        path = request.path
        key = (path, request.headers.get(EVENT_ID_HEADER, ""))
        self.seen[key] += 1
        status = {"/ok": 200, "/bad": 400}.get(path, 200)
        if path == "/flaky" and self.seen[key] <= 2:
            status = 503
        self.statuses.setdefault(path, Tally())[status] += 1
        return web.Response(status=status, text="" if status == 200 else "nope")

    def got(self, path: str, status: int | None = None) -> int:
        tally = self.statuses.get(path, Tally())
        return tally.total() if status is None else tally[status]


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiver.port).start()
    try:
        yield receiver
    finally:
        await runner.cleanup()


def subscription(sub_id: str, url: str) -> str:
    return f'[[subscription]]\nid = "{sub_id}"\nurl = "{url}"\nsecrets = ["{SECRET}"]\n\n'


def make_alert(i: int) -> Alert:
    return Alert(
        alert_id=f"alert-{i}",
        type="fraud.block",
        decision=Decision(
            transaction_id=f"tx-{i}",
            customer_id=f"c-{i % 5}",
            action=Action.BLOCK,
            score=0.9,
            amount_minor=100,
            currency="EUR",
        ),
        created_at_ms=int(time.time() * 1000),
    )


async def produce_alerts(settings: Settings, alerts: list[Alert]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.brokers, linger_ms=1)
    await producer.start()
    try:
        for alert in alerts:
            await producer.send_and_wait(
                settings.topic_names.alerts,
                alert.SerializeToString(),
                key=alert.decision.customer_id.encode(),
            )
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def webhook_sink(
    settings: Settings, subs: Path, metrics: WebhookMetrics
) -> AsyncIterator[WebhookStats]:
    stats = WebhookStats()
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(
        run_webhooks(
            settings, subs, stop=stop, ready=ready, stats=stats, metrics=metrics, policy=FAST,
            breaker_threshold=1000,
        )
    )  # fmt: skip
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiter], timeout=20, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()  # raises what made it end
    assert ready.is_set(), "the webhook sink did not get ready in 20 s"
    try:
        yield stats
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=20)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_webhook_metrics_scraped_during_a_run_match_what_the_receiver_got(
    settings: Settings, tmp_path: Path
) -> None:
    n = 8
    registry = CollectorRegistry()
    metrics = WebhookMetrics(registry)
    deliveries = "fraud_webhook_deliveries_total"

    def finished(s: Samples) -> bool:
        return (
            sample(s, deliveries, endpoint="ok", outcome="delivered") >= n
            and sample(s, deliveries, endpoint="flaky", outcome="delivered") >= n
            and sample(s, deliveries, endpoint="bad", outcome="dead_lettered") >= n
        )

    async def main() -> None:
        async with receiving() as rx:
            subs = tmp_path / "subs.toml"
            subs.write_text(
                subscription("ok", rx.url("/ok"))
                + subscription("flaky", rx.url("/flaky"))
                + subscription("bad", rx.url("/bad"))
            )
            with serve_metrics(free_port(), registry=registry) as server:
                async with webhook_sink(settings, subs, metrics) as stats:
                    await produce_alerts(settings, [make_alert(i) for i in range(n)])
                    s = await scrape_until(server.url, finished, "every delivery finished")
                    # scraped while the sink runs: compare with what the receiver got
                    for endpoint, path in (("ok", "/ok"), ("flaky", "/flaky"), ("bad", "/bad")):
                        by = {"endpoint": endpoint}
                        assert sample(s, deliveries, outcome="delivered", **by) == rx.got(path, 200)
                        attempts = {
                            status: sample(s, "fraud_webhook_attempts_total", status=status, **by)
                            for status in ("2xx", "4xx", "5xx", "no_response")
                        }
                        assert attempts == {
                            "2xx": rx.got(path, 200),
                            "4xx": rx.got(path, 400),
                            "5xx": rx.got(path, 503),
                            "no_response": 0,
                        }, endpoint
                        assert sum(attempts.values()) == rx.got(path)
                        assert sample(
                            s, "fraud_webhook_request_duration_seconds_count", **by
                        ) == rx.got(path)
                        assert sample(s, "fraud_webhook_circuit_breaker_state", **by) == 0
                        assert sample(s, deliveries, outcome="failed", **by) == 0
                    assert rx.got("/ok") == rx.got("/ok", 200) == n  # exactly once each
                    assert rx.got("/flaky", 503) == 2 * n and rx.got("/flaky", 200) == n
                    assert rx.got("/bad", 400) == n
                    # flaky: two failed attempts each went through the retry topics
                    assert sample(s, deliveries, endpoint="flaky", outcome="retried") == 2 * n
                    assert sample(s, "fraud_webhook_retries_total", endpoint="flaky") == 2 * n
                    assert sample(s, "fraud_webhook_retries_total", endpoint="ok") == 0
                    # bad: 400 is not retried
                    assert sample(s, deliveries, endpoint="bad", outcome="retried") == 0
                    assert sample(s, deliveries, endpoint="bad", outcome="dead_lettered") == n
                    latency = "fraud_webhook_delivery_latency_seconds"
                    assert sample(s, f"{latency}_count", endpoint="ok") == n
                    assert sample(s, f"{latency}_count", endpoint="flaky") == n
                    # flaky deliveries waited for two retries: at least 0.2 s + 0.5 s
                    assert sample(s, f"{latency}_bucket", endpoint="flaky", le="0.5") == 0
                    assert sample(s, f"{latency}_bucket", endpoint="flaky", le="+Inf") == n
                    # the same points as the run's own stats
                    assert stats.delivered == 2 * n and stats.dead_lettered == n
                    assert stats.retried == 2 * n and stats.attempts == rx.got("/ok") + rx.got(
                        "/flaky"
                    ) + rx.got("/bad")

    asyncio.run(main())


# ---------------------------------------------------------------- notifier


class FakeSender:
    """Raises the queued errors first, then succeeds."""

    def __init__(self) -> None:
        self.errors: list[SendError] = []
        self.sent: list[Notification] = []

    async def send(self, notification: Notification) -> None:
        if self.errors:
            raise self.errors.pop(0)
        self.sent.append(notification)

    async def close(self) -> None:
        pass


NOTIFIER_CONFIG = """
dedupe_window_s = 600
rate_limit_per_minute = 1

[smtp]
host = "smtp.example.com"
sender = "Fraud Desk <fraud@example.com>"

[delivery]
attempts = 2
backoff_s = 0.5
breaker_failures = 1
breaker_reset_s = 60

[[route]]
name = "desk"
topic = "alerts"
channel = "email"
to = "desk@example.com"
"""


def test_notifier_dispatcher_feeds_its_metrics() -> None:
    registry = CollectorRegistry()
    config = parse_config(tomllib.loads(NOTIFIER_CONFIG), {})
    sender = FakeSender()
    clock = [1_800_000_000.0]

    async def sleep(seconds: float) -> None:
        clock[0] += seconds

    d = Dispatcher(
        config, {"email": sender}, clock=lambda: clock[0], monotonic=lambda: clock[0],
        sleep=sleep, metrics=NotifierMetrics(registry),
    )  # fmt: skip

    def alert(customer: str) -> bytes:
        return Alert(
            alert_id=f"a-{customer}", type="fraud.block",
            decision=Decision(customer_id=customer, action=Action.BLOCK, currency="EUR"),
        ).SerializeToString()  # fmt: skip

    def value(name: str, **labels: str) -> float:
        got = registry.get_sample_value(name, labels)
        assert got is not None, f"no sample {name}{labels}"
        return got

    def notifications(outcome: str) -> float:
        return value(
            "fraud_notifier_notifications_total", route="desk", channel="email", outcome=outcome
        )

    source: dict[str, Any] = {"topic": "t-alerts", "partition": 0, "offset": 0}

    async def main() -> None:
        assert notifications("sent") == 0 and notifications("failed") == 0  # there from start
        sender.errors = [SendError("busy", retryable=True)]
        assert await d.handle(config.routes, alert("C1"), source) == []  # sent on the retry
        assert await d.handle(config.routes, alert("C1"), source) == []  # duplicate
        assert await d.handle(config.routes, alert("C2"), source) == []  # 1 per minute
        clock[0] += 120
        sender.errors = [SendError("down", retryable=True), SendError("down", retryable=True)]
        assert len(await d.handle(config.routes, alert("C3"), source)) == 1  # given up
        assert len(await d.handle(config.routes, b"\xff\xff", source)) == 1  # undecodable

    asyncio.run(main())
    assert len(sender.sent) == 1
    assert notifications("sent") == 1
    assert notifications("deduplicated") == 1
    assert notifications("rate_limited") == 1
    assert notifications("failed") == 1
    assert value("fraud_notifier_retries_total", channel="email") == 2
    assert value("fraud_notifier_send_duration_seconds_count", channel="email") == 4
    assert value("fraud_notifier_records_total", topic="t-alerts") == 5
    assert value("fraud_notifier_dead_letters_total", reason="send_failed") == 1
    assert value("fraud_notifier_dead_letters_total", reason="decode_error") == 1
    assert value("fraud_notifier_dead_letters_total", reason="no_recipient") == 0
    assert value("fraud_notifier_circuit_breaker_state", channel="email") == 2  # open
    # the run's stats counted the same things
    assert (d.stats.sent, d.stats.deduplicated, d.stats.rate_limited, d.stats.failed) == (
        1, 1, 1, 1,
    )  # fmt: skip


# ---------------------------------------------------------------- CLI


@pytest.mark.parametrize("command", ["webhooks", "notifier"])
def test_metrics_port_flag_is_off_by_default_and_has_an_env_fallback(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    required = ["--subscriptions", "s.toml"] if command == "webhooks" else ["--config", "n.toml"]
    monkeypatch.delenv("FRAUD_METRICS_PORT", raising=False)
    monkeypatch.delenv("FRAUD_METRICS_HOST", raising=False)
    args = cli.build_parser().parse_args([command, *required])
    assert args.metrics_port is None and args.metrics_host == "127.0.0.1"
    args = cli.build_parser().parse_args([command, *required, "--metrics-port", "9108"])
    assert args.metrics_port == 9108
    monkeypatch.setenv("FRAUD_METRICS_PORT", "9109")
    monkeypatch.setenv("FRAUD_METRICS_HOST", "0.0.0.0")
    args = cli.build_parser().parse_args([command, *required])
    assert args.metrics_port == 9109 and args.metrics_host == "0.0.0.0"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, *required, "--metrics-port", "70000"])
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args([command, "--help"])
    assert "FRAUD_METRICS_PORT" in capsys.readouterr().out


def test_metrics_endpoint_serves_the_process_metrics_while_the_command_runs() -> None:
    port = free_port()
    args = cli.build_parser().parse_args(
        ["webhooks", "--subscriptions", "s.toml", "--metrics-port", str(port)]
    )
    registered: list[str] = []

    def register() -> None:
        registered.append("yes")

    with cli._metrics_endpoint(args, register):
        assert registered == ["yes"]
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
        assert any(name.startswith("process_") or name.startswith("python_") for name, _ in samples)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)

    off = cli.build_parser().parse_args(["webhooks", "--subscriptions", "s.toml"])
    with cli._metrics_endpoint(off, register):
        pass
    assert registered == ["yes"]  # not registered, nothing served

    with serve_metrics(port) as taken, pytest.raises(cli.CliError, match="cannot serve metrics"):
        assert taken.port == port
        with cli._metrics_endpoint(args, register):
            pass
