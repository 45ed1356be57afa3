"""Sink metrics: the webhook sink through the broker, scraped over HTTP while it runs; the
notifier's dispatcher with a fake sender; the ``--metrics-port`` flag of the sink commands.

Each test builds its metrics on a fresh ``CollectorRegistry`` and passes them in, so counts
are exact whatever else ran in the process.
"""

from __future__ import annotations

import asyncio
import tomllib
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from fraud import cli
from fraud.broker import free_port
from fraud.contracts.records import RawRecord
from fraud.metrics import NotifierMetrics, serve_metrics
from fraud.sinks.notify.routing import Notification, SendError, parse_config
from fraud.sinks.notify.service import Dispatcher
from fraud.v1.alert_pb2 import Alert
from fraud.v1.decision_pb2 import Action, Decision

SECRET = "whsec-metrics"

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


# ---------------------------------------------------------------- webhook receiver


def subscription(sub_id: str, url: str) -> str:
    return f'[[subscription]]\nid = "{sub_id}"\nurl = "{url}"\nsecrets = ["{SECRET}"]\n\n'


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

    def source(value: bytes) -> RawRecord:
        return RawRecord(None, value, "t-alerts", 0, 0, 0)

    async def main() -> None:
        assert notifications("sent") == 0 and notifications("failed") == 0  # there from start
        sender.errors = [SendError("busy", retryable=True)]
        assert await d.handle(config.routes, source(alert("C1"))) == []  # sent on the retry
        assert await d.handle(config.routes, source(alert("C1"))) == []  # duplicate
        assert await d.handle(config.routes, source(alert("C2"))) == []  # 1 per minute
        clock[0] += 120
        sender.errors = [SendError("down", retryable=True), SendError("down", retryable=True)]
        assert len(await d.handle(config.routes, source(alert("C3")))) == 1  # given up
        assert len(await d.handle(config.routes, source(b"\xff\xff"))) == 1  # undecodable

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
