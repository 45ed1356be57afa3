"""A local webhook receiver and SMTP server, for the demo: what a subscriber would run.

``WebhookReceiver`` verifies every delivery's signature on the raw body, de-duplicates on the
event id, and records the alert-to-receipt latency. ``MailCatcher`` is a real SMTP server
(aiosmtpd) that keeps what it receives. Both bind to 127.0.0.1 and run in a thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from fraud.broker import free_port
from fraud.sinks.webhooks.signing import SignatureError, verify


@dataclass
class ReceiverStats:
    delivered: int = 0
    duplicates: int = 0
    rejected: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    event_ids: set[str] = field(default_factory=set)


class WebhookReceiver:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.port = free_port()
        self.stats = ReceiverStats()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        try:
            event_id = verify(self.secret, request.headers, body, now_s=int(now))
        except SignatureError as exc:
            with self._lock:
                self.stats.rejected += 1
            return web.Response(status=400, text=str(exc))
        with self._lock:
            if event_id in self.stats.event_ids:
                self.stats.duplicates += 1
                return web.Response(status=200)
            self.stats.event_ids.add(event_id)
            self.stats.delivered += 1
            created = int(json.loads(body).get("created_at_ms", 0))
            if created:
                self.stats.latencies_ms.append(now * 1000 - created)
        return web.Response(status=204)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/alerts", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def start(self) -> WebhookReceiver:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


class _Collect:
    def __init__(self) -> None:
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 OK"


class MailCatcher:
    """A real SMTP server on 127.0.0.1 that keeps every message."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.port = free_port()
        self._handler = _Collect()
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[tuple[str, list[str], bytes]]:
        return self._handler.messages

    def start(self) -> MailCatcher:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()
