"""The webhook sink end to end: real aiohttp receivers on 127.0.0.1, alerts through the broker.

Every test runs the sink (``run_webhooks``) and its receivers on one asyncio loop, produces
``fraud.v1.Alert`` messages to the alerts topic itself, and waits on conditions (no fixed
sleeps). The retry policy is short (0.2 s, 0.5 s, no jitter) so the suite stays fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiokafka import AIOKafkaProducer

from fraud.broker import free_port
from fraud.contracts.wire import to_json
from fraud.settings import Settings
from fraud.sinks.retry import RetryPolicy
from fraud.sinks.webhooks.dlq import list_dead_letters, redrive
from fraud.sinks.webhooks.envelope import percentile
from fraud.sinks.webhooks.service import WebhookStats, run_webhooks
from fraud.sinks.webhooks.signing import (
    EVENT_ID_HEADER,
    TIMESTAMP_HEADER,
    SignatureError,
    verify,
)
from fraud.v1.alert_pb2 import Alert
from fraud.v1.decision_pb2 import Action, Decision

pytestmark = pytest.mark.timeout(60)

SECRET = b"whsec-current"
OLD_SECRET = b"whsec-previous"
FAST = RetryPolicy(delays=(0.2, 0.5), jitter=0.0)


# ---------------------------------------------------------------- receiver


@dataclass
class Arrival:
    path: str
    event_id: str
    at: float  # wall clock, s
    headers: dict[str, str]
    body: bytes
    status: int = 0


@dataclass
class Receiver:
    """One aiohttp server; each path behaves differently (see ``handle``)."""

    port: int = field(default_factory=free_port)
    arrivals: list[Arrival] = field(default_factory=list)
    # de-duplicated successes per path: event id -> first successful arrival
    delivered: dict[str, dict[str, Arrival]] = field(default_factory=lambda: defaultdict(dict))
    broken: set[str] = field(default_factory=set)  # paths that answer 500 while listed
    fail_times: int = 2  # /flaky fails this many times per event id
    hold: float = 0.0  # /slow-then-fine sleeps this long while > 0
    release: asyncio.Event = field(default_factory=asyncio.Event)  # wakes /dead at teardown
    bad_signatures: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def attempts(self, path: str, event_id: str) -> list[Arrival]:
        return [a for a in self.arrivals if a.path == path and a.event_id == event_id]

    def latencies_ms(self, path: str) -> list[float]:
        out = []
        for arrival in self.delivered[path].values():
            created = json.loads(arrival.body)["created_at_ms"]
            out.append(arrival.at * 1000 - int(created))
        return out

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        at = time.time()
        path = request.path
        arrival = Arrival(path, request.headers.get(EVENT_ID_HEADER, ""), at,
                          dict(request.headers), body)  # fmt: skip
        self.arrivals.append(arrival)
        try:
            verify([OLD_SECRET], request.headers, body, now_s=int(at))  # rotation: old only
        except SignatureError:
            self.bad_signatures += 1
            arrival.status = 401
            return web.Response(status=401, text="bad signature")
        earlier = len(self.attempts(path, arrival.event_id)) - 1
        status, headers = 200, {}
        if path in self.broken:
            status = 500
        elif path == "/flaky" and earlier < self.fail_times:
            status = 503
        elif path == "/limited" and earlier == 0:
            status, headers = 429, {"Retry-After": "1"}
        elif path == "/bad":
            status = 400
        elif path == "/dead":
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.release.wait(), timeout=10)
            status = 200
        elif path == "/slow-then-fine" and self.hold > 0:
            await asyncio.sleep(self.hold)
        arrival.status = status
        if status == 200:
            self.delivered[path].setdefault(arrival.event_id, arrival)  # receiver de-duplicates
        return web.Response(status=status, headers=headers, text="nope" if status >= 400 else "")


@contextlib.asynccontextmanager
async def receiving() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", receiver.port)
    await site.start()
    try:
        yield receiver
    finally:
        receiver.release.set()
        await runner.cleanup()


# ---------------------------------------------------------------- helpers


def subscription(sub_id: str, url: str, **extra: Any) -> str:
    lines = [
        "[[subscription]]",
        f'id = "{sub_id}"',
        f'url = "{url}"',
        f'secrets = ["{SECRET.decode()}", "{OLD_SECRET.decode()}"]',
    ]
    for key, value in extra.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n\n"


def make_alert(i: int, *, action: int = Action.REVIEW, prefix: str = "alert") -> Alert:
    return Alert(
        alert_id=f"{prefix}-{i}",
        type="fraud.review" if action == Action.REVIEW else "fraud.block",
        decision=Decision(
            transaction_id=f"tx-{i}",
            customer_id=f"c-{i % 17}",
            action=action,  # type: ignore[arg-type]
            score=0.9,
            amount_minor=12_345,
            currency="EUR",
        ),
        created_at_ms=int(time.time() * 1000),
    )


class Alerts:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.producer = AIOKafkaProducer(bootstrap_servers=settings.brokers, linger_ms=1)

    async def send(self, alerts: list[Alert]) -> None:
        topic = self.settings.topic_names.alerts
        futures = []
        for a in alerts:
            a.created_at_ms = int(time.time() * 1000)
            futures.append(
                await self.producer.send(
                    topic, a.SerializeToString(), key=a.decision.customer_id.encode()
                )
            )
        await asyncio.gather(*futures)


@contextlib.asynccontextmanager
async def producing(settings: Settings) -> AsyncIterator[Alerts]:
    alerts = Alerts(settings)
    await alerts.producer.start()
    try:
        yield alerts
    finally:
        await alerts.producer.stop()


@contextlib.asynccontextmanager
async def sink(settings: Settings, subs: Path, **kwargs: Any) -> AsyncIterator[WebhookStats]:
    stats = WebhookStats()
    stop, ready = asyncio.Event(), asyncio.Event()
    kwargs.setdefault("policy", FAST)
    kwargs.setdefault("breaker_threshold", 1000)
    task = asyncio.create_task(
        run_webhooks(settings, subs, stop=stop, ready=ready, stats=stats, **kwargs)
    )
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


async def until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> float:
    """Wait for ``condition``; the seconds it took."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


# ---------------------------------------------------------------- (1) exactly once


def test_every_alert_delivered_exactly_once_to_a_healthy_endpoint(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 200

    async def main() -> None:
        async with receiving() as rx, producing(settings) as alerts:
            subs = tmp_path / "subs.toml"
            subs.write_text(subscription("ok", rx.url("/ok"), max_concurrency=8))
            async with sink(settings, subs) as stats:
                for start in range(0, n, 10):  # about 200 alerts/s, not one burst
                    await alerts.send([make_alert(i) for i in range(start, start + 10)])
                    await asyncio.sleep(0.05)
                await until(lambda: len(rx.delivered["/ok"]) >= n, what="200 deliveries")
                await until(lambda: stats.delivered >= n, what="stats")
            got = rx.delivered["/ok"]
            assert set(got) == {f"alert-{i}:ok" for i in range(n)}  # none missing, no stranger
            assert rx.bad_signatures == 0
            assert stats.dead_lettered == 0 and stats.retried == 0
            lat = rx.latencies_ms("/ok")
            p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
            with capsys.disabled():
                print(
                    f"\nwebhook latency, alert created -> receiver receipt, {n} alerts: "
                    f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(lat):.1f} ms; "
                    f"{len(rx.arrivals)} requests for {len(got)} events\n{stats.summary()}"
                )
            assert p99 < 2000

    run(main())


def test_restart_redelivers_unfinished_and_the_receiver_deduplicates(
    settings: Settings, tmp_path: Path
) -> None:
    n = 20

    async def main() -> None:
        async with receiving() as rx, producing(settings) as alerts:
            subs = tmp_path / "subs.toml"
            subs.write_text(subscription("s", rx.url("/slow-then-fine"), max_concurrency=4))
            rx.hold = 2.0
            async with sink(settings, subs, drain_timeout_s=0.05):
                await alerts.send([make_alert(i) for i in range(n)])
                await until(lambda: len(rx.arrivals) >= 4, what="4 requests in flight")
            # stopped with 4 deliveries in flight: not finished, so not committed
            assert len(rx.delivered["/slow-then-fine"]) < n
            rx.hold = 0.0
            async with sink(settings, subs):
                await until(lambda: len(rx.delivered["/slow-then-fine"]) >= n, what="all")
            assert set(rx.delivered["/slow-then-fine"]) == {f"alert-{i}:s" for i in range(n)}
            assert len(rx.arrivals) > n  # at-least-once: some were sent twice ...
            per_event: dict[str, int] = defaultdict(int)
            for a in rx.arrivals:
                per_event[a.event_id] += 1
            assert max(per_event.values()) >= 2  # ... under the same event id

    run(main())


# ---------------------------------------------------------------- (2) DLQ and re-drive


def test_failing_endpoint_reaches_dlq_then_redrive_delivers_once_fixed(
    settings: Settings, tmp_path: Path
) -> None:
    n = 3

    async def main() -> None:
        async with receiving() as rx, producing(settings) as alerts:
            subs = tmp_path / "subs.toml"
            subs.write_text(
                subscription("ok", rx.url("/ok")) + subscription("down", rx.url("/down"))
            )
            rx.broken.add("/down")
            async with sink(settings, subs) as stats:
                await alerts.send([make_alert(i) for i in range(n)])
                await until(lambda: stats.dead_lettered >= n, what="dead letters")
                letters = await asyncio.to_thread(list_dead_letters, settings)
                assert len(letters) == n
                for entry in letters:
                    e, letter = entry.envelope, entry.letter
                    assert e.subscription_id == "down" and e.url == rx.url("/down")
                    assert e.attempt == FAST.max_attempts == 3
                    assert e.last_status == 500
                    assert e.last_error.startswith("HTTP 500")
                    assert letter.reason == "attempts_exhausted"
                    assert "attempts exhausted" in letter.detail
                    assert letter.source_topic == settings.topic_names.alerts
                    assert letter.key == e.event_id.encode()
                    # first try, then 0.2 s, then 0.5 s later
                    assert e.last_attempt_ms - e.first_attempt_ms >= 700
                    assert letter.failed_at_ms >= e.last_attempt_ms
                    times = [a.at for a in rx.attempts("/down", e.event_id)]
                    assert len(times) == 3
                    assert times[1] - times[0] >= 0.2 - 0.01
                    assert times[2] - times[1] >= 0.5 - 0.01
                    assert json.loads(e.body)["alert_id"] == e.alert_id
                assert len(rx.delivered["/ok"]) == n  # the healthy one got everything

                rx.broken.clear()  # fixed
                assert await asyncio.to_thread(redrive, settings, endpoint="down") == n
                await until(lambda: len(rx.delivered["/down"]) >= n, what="re-driven")
                assert await asyncio.to_thread(redrive, settings, endpoint="down") == 0
                assert await asyncio.to_thread(redrive, settings, all=True) == 0
            for i in range(n):  # three failures, then one delivery of the re-driven letter
                statuses = [a.status for a in rx.attempts("/down", f"alert-{i}:down")]
                assert statuses == [500, 500, 500, 200]
            assert set(rx.delivered["/down"]) == {f"alert-{i}:down" for i in range(n)}
            assert await asyncio.to_thread(list_dead_letters, settings) == []
            everything = await asyncio.to_thread(list_dead_letters, settings, include_redriven=True)
            assert len(everything) == n and all(e.redriven for e in everything)
            with pytest.raises(ValueError, match="needs"):
                redrive(settings)

    run(main())


def test_endpoint_failing_twice_then_recovering_gets_it_on_the_third_attempt(
    settings: Settings, tmp_path: Path
) -> None:
    async def main() -> None:
        async with receiving() as rx, producing(settings) as alerts:
            subs = tmp_path / "subs.toml"
            subs.write_text(subscription("flaky", rx.url("/flaky")))
            rx.fail_times = 2
            async with sink(settings, subs) as stats:
                await alerts.send([make_alert(i) for i in range(5)])
                await until(lambda: len(rx.delivered["/flaky"]) >= 5, what="deliveries")
                assert stats.dead_lettered == 0
                assert stats.retried == 10
            for i in range(5):
                assert [a.status for a in rx.attempts("/flaky", f"alert-{i}:flaky")] == [
                    503,
                    503,
                    200,
                ]

    run(main())


# ---------------------------------------------------------------- (3) isolation


def test_dead_endpoint_does_not_delay_a_healthy_one(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    n = 60
    timeout_s = 1.0

    async def main() -> None:
        async with receiving() as rx, producing(settings) as alerts:
            subs = tmp_path / "subs.toml"
            subs.write_text(
                subscription("dead", rx.url("/dead"), timeout_s=timeout_s, max_concurrency=2)
                + subscription("ok", rx.url("/ok"))
            )
            async with sink(settings, subs, breaker_threshold=5, breaker_reset_s=30.0) as stats:
                start = time.monotonic()
                for first in range(0, n, 10):  # paced like the exactly-once test
                    await alerts.send([make_alert(i) for i in range(first, first + 10)])
                    await asyncio.sleep(0.05)
                await until(lambda: len(rx.delivered["/ok"]) >= n, what="healthy")
                took = time.monotonic() - start
                # serially, each dead delivery would hold the stream for timeout_s
                assert took < 0.1 * n * timeout_s
                dead_calls = len({a.event_id for a in rx.arrivals if a.path == "/dead"})
                await until(lambda: stats.retried >= n, what="dead ones handed to retry")
                elapsed = time.monotonic() - start
            lat = rx.latencies_ms("/ok")
            p50, p99 = percentile(lat, 0.5), percentile(lat, 0.99)
            with capsys.disabled():
                print(
                    f"\nhealthy endpoint beside a dead one: {n} alerts in {took:.2f} s, "
                    f"p50 {p50:.1f} ms, p99 {p99:.1f} ms; the dead one was called for "
                    f"{dead_calls} events, breaker short-circuited {stats.short_circuited}; "
                    f"all {n} dead deliveries in retry after {elapsed:.2f} s"
                )
            assert p99 < 1000
            assert stats.short_circuited > 0  # the breaker opened: no more calls to /dead

    run(main())


def test_saturated_endpoint_defers_without_spending_attempts(
    settings: Settings, tmp_path: Path
) -> None:
    n = 6

    async def main() -> None:
        async with receiving() as rx, producing(settings) as alerts:
            subs = tmp_path / "subs.toml"
            subs.write_text(subscription("slow", rx.url("/slow-then-fine"), max_concurrency=1))
            rx.hold = 0.2
            async with sink(settings, subs, max_pending_per_endpoint=2) as stats:
                await alerts.send([make_alert(i) for i in range(n)])
                await until(lambda: len(rx.delivered["/slow-then-fine"]) >= n, what="all")
                assert stats.deferred > 0  # over the cap: handed to the retry topic ...
                assert stats.dead_lettered == 0  # ... without counting an attempt
                assert stats.attempts == n

    run(main())


# ---------------------------------------------------------------- (4) signatures


def test_signatures_verify_and_tampering_does_not(settings: Settings, tmp_path: Path) -> None:
    async def main() -> None:
        async with receiving() as rx, producing(settings) as alerts:
            subs = tmp_path / "subs.toml"
            subs.write_text(subscription("ok", rx.url("/ok")))
            sent = make_alert(7)
            async with sink(settings, subs):
                await alerts.send([sent])
                await until(lambda: len(rx.delivered["/ok"]) >= 1, what="delivery")
            arrival = rx.delivered["/ok"]["alert-7:ok"]
            headers, body = arrival.headers, arrival.body
            assert headers["Content-Type"] == "application/json"
            assert body == to_json(sent).encode()  # the raw body is to_json(alert)
            now = int(headers[TIMESTAMP_HEADER])
            for secrets in ([SECRET], [OLD_SECRET], [b"other", SECRET]):  # both secrets sign
                assert verify(secrets, headers, body, now_s=now) == "alert-7:ok"
            tampered = body.replace(b'"score": 0.9', b'"score": 0.1')
            assert tampered != body
            with pytest.raises(SignatureError, match="no valid signature"):
                verify([SECRET], headers, tampered, now_s=now)
            with pytest.raises(SignatureError, match="too old"):
                verify([SECRET], headers, body, now_s=now + 301)
            with pytest.raises(SignatureError, match="no valid signature"):
                verify([b"whsec-unknown"], headers, body, now_s=now)
            replayed = {**headers, TIMESTAMP_HEADER: str(now + 60)}  # re-stamped: no match
            with pytest.raises(SignatureError, match="no valid signature"):
                verify([SECRET], replayed, body, now_s=now + 60)

    run(main())


# ---------------------------------------------------------------- (5) 429 Retry-After


def test_429_retry_after_is_honoured(settings: Settings, tmp_path: Path) -> None:
    # Retry-After is capped at the last delay, so the policy reaches past 1 s
    policy = RetryPolicy(delays=(0.2, 0.5, 1.5), jitter=0.0)

    async def main() -> None:
        async with receiving() as rx, producing(settings) as alerts:
            subs = tmp_path / "subs.toml"
            subs.write_text(subscription("lim", rx.url("/limited")))
            async with sink(settings, subs, policy=policy) as stats:
                await alerts.send([make_alert(i) for i in range(3)])
                await until(lambda: len(rx.delivered["/limited"]) >= 3, what="deliveries")
                assert stats.dead_lettered == 0
            for i in range(3):
                tries = rx.attempts("/limited", f"alert-{i}:lim")
                assert [a.status for a in tries] == [429, 200]
                assert tries[1].at - tries[0].at >= 1.0  # not before Retry-After (0.2 s level)

    run(main())


# ---------------------------------------------------------------- (6) 400


def test_400_goes_straight_to_the_dlq(settings: Settings, tmp_path: Path) -> None:
    async def main() -> None:
        async with receiving() as rx, producing(settings) as alerts:
            subs = tmp_path / "subs.toml"
            subs.write_text(subscription("bad", rx.url("/bad")))
            async with sink(settings, subs) as stats:
                await alerts.send([make_alert(1)])
                await until(lambda: stats.dead_lettered >= 1, what="dead letter")
                assert stats.retried == 0
            (entry,) = await asyncio.to_thread(list_dead_letters, settings, endpoint="bad")
            e = entry.envelope
            assert (e.attempt, e.last_status, e.event_id) == (1, 400, "alert-1:bad")
            assert entry.letter.reason == "not_retryable" and "HTTP 400" in entry.letter.detail
            assert e.last_error == "HTTP 400: nope"
            assert e.first_attempt_ms == e.last_attempt_ms
            assert len(rx.attempts("/bad", "alert-1:bad")) == 1
            assert await asyncio.to_thread(list_dead_letters, settings, endpoint="other") == []
            by_url = await asyncio.to_thread(list_dead_letters, settings, endpoint=rx.url("/bad"))
            assert len(by_url) == 1
            by_alert = await asyncio.to_thread(list_dead_letters, settings, event_id="alert-1")
            assert len(by_alert) == 1

    run(main())


# ---------------------------------------------------------------- (7) reload


def test_subscriptions_reload_at_run_time_and_a_bad_file_keeps_the_old_set(
    settings: Settings, tmp_path: Path
) -> None:
    async def main() -> None:
        async with receiving() as rx, producing(settings) as alerts:
            subs = tmp_path / "subs.toml"
            subs.write_text(subscription("a", rx.url("/a")))
            async with sink(settings, subs) as stats:
                await alerts.send([make_alert(1)])
                await until(lambda: "alert-1:a" in rx.delivered["/a"], what="alert 1 to a")

                subs.write_text(
                    subscription("a", rx.url("/a"))
                    + subscription("b", rx.url("/b"), min_action="BLOCK")
                )
                await until(lambda: stats.reloads >= 1, what="reload")
                await alerts.send([make_alert(2, action=Action.BLOCK)])
                await alerts.send([make_alert(3, action=Action.REVIEW)])
                await until(lambda: "alert-2:b" in rx.delivered["/b"], what="alert 2 to b")
                await until(lambda: "alert-3:a" in rx.delivered["/a"], what="alert 3 to a")

                subs.write_text("[[subscription]]\nid = 'a'\nurl = 'not a url'\n")
                await until(lambda: stats.reload_errors >= 1, what="reload error")
                await alerts.send([make_alert(4, action=Action.BLOCK)])
                await until(lambda: "alert-4:b" in rx.delivered["/b"], what="alert 4 to b")
                await until(lambda: "alert-4:a" in rx.delivered["/a"], what="alert 4 to a")
            assert set(rx.delivered["/a"]) == {f"alert-{i}:a" for i in (1, 2, 3, 4)}
            assert set(rx.delivered["/b"]) == {"alert-2:b", "alert-4:b"}  # not 1; 3 is REVIEW
            assert stats.reloads == 1

    run(main())
