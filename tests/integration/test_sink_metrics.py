"""Sink metrics: the webhook sink through the broker, scraped over HTTP while it runs; the
notifier's dispatcher with a fake sender; the ``--metrics-port`` flag of the sink commands.

Each test builds its metrics on a fresh ``CollectorRegistry`` and passes them in, so counts
are exact whatever else ran in the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer
from prometheus_client import CollectorRegistry

from fraud.broker import free_port
from fraud.metrics import WebhookMetrics, serve_metrics
from fraud.settings import Settings
from fraud.sinks.retry import RetryPolicy
from fraud.sinks.webhooks.service import WebhookStats, run_webhooks
from fraud.sinks.webhooks.signing import EVENT_ID_HEADER
from fraud.v1.alert_pb2 import Alert
from fraud.v1.decision_pb2 import Action, Decision
from tests.unit.sinks.test_sink_metrics import Samples, sample, scrape, subscription

FAST = RetryPolicy(delays=(0.2, 0.5), jitter=0.0)


# ---------------------------------------------------------------- scraping


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


# ---------------------------------------------------------------- CLI
