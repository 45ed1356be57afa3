"""The real servers and sink processes of scenario 5 (``sinks``), all on 127.0.0.1.

- ``Endpoint``: a webhook receiver (aiohttp, its own thread and loop) that verifies every
  signature and answers by its mode: ``ok`` (204), ``500`` (HTTP 500), ``slow`` (204 after
  ``slow_s``, past the sink's timeout). A ``down`` endpoint is simply not listening yet: the
  sink's connections are refused until ``start``. It keeps every 2xx receipt (repeats too).
- ``MailServer``: a real SMTP server (aiosmtpd) that keeps the alert id of every email; stopped
  and started again on the same port for the SMTP outage.
- ``SinkProcess``: ``fraud notifier`` or the webhook sink (``fraud.tools.faults.sinkchild``) as
  a child process, stopped with SIGTERM.
- ``webhook_dead_letters``, ``notifier_dead_letters``, ``redrive``, ``redrive_notifier``: read
  the dead-letter topics and run ``fraud dlq redrive`` (the real command) in a child process.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

from aiohttp import web

from fraud.broker import free_port
from fraud.settings import Settings
from fraud.sinks.notify import dlq as notifier_dlq
from fraud.sinks.notify.service import SEND_FAILED
from fraud.sinks.webhooks.dlq import list_dead_letters
from fraud.sinks.webhooks.signing import SignatureError, verify
from fraud.tools.faults.harness import HarnessError, child_env, kafka_args
from fraud.tools.faults.sinkcount import DeadLetterSeen

SUBJECT_PREFIX = "alert "


@dataclass
class Receipts:
    """What one endpoint received: 2xx receipts (event id, latency ms), in order."""

    event_ids: list[str] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0  # HTTP 500 answers
    late: int = 0  # answered after the sink's timeout (slow mode)
    rejected: int = 0  # bad signature


class Endpoint:
    """A webhook endpoint on 127.0.0.1 whose answers follow ``mode`` (thread-safe)."""

    def __init__(self, name: str, secret: bytes, mode: str = "ok", slow_s: float = 5.0) -> None:
        self.name = name
        self.secret = secret
        self.slow_s = slow_s
        self.port = free_port()
        self._mode = mode
        self._fixed_at: int | None = None  # receipts before this index came before the fix
        self._lock = threading.Lock()
        self._receipts = Receipts()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=name)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def listening(self) -> bool:
        return self._runner is not None

    def fix(self) -> None:
        """From now on answer 204; receipts from here on count as re-delivered."""
        with self._lock:
            self._mode = "ok"
            self._fixed_at = len(self._receipts.event_ids)

    def snapshot(self) -> tuple[Receipts, int]:
        """A copy of the receipts, and how many of them came before ``fix`` (all if unfixed)."""
        with self._lock:
            r = self._receipts
            copy = Receipts(list(r.event_ids), list(r.latencies_ms), r.errors, r.late, r.rejected)
            before = len(copy.event_ids) if self._fixed_at is None else self._fixed_at
            return copy, before

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self._lock:
            mode = self._mode
        try:
            event_id = verify(self.secret, request.headers, body, now_s=int(time.time()))
        except SignatureError as exc:
            with self._lock:
                self._receipts.rejected += 1
            return web.Response(status=400, text=str(exc))
        if mode == "500":
            with self._lock:
                self._receipts.errors += 1
            return web.Response(status=500, text="failing on purpose (fault suite)")
        if mode == "slow":
            await asyncio.sleep(self.slow_s)  # the fault itself: an answer past the timeout
            with self._lock:
                self._receipts.late += 1
            return web.Response(status=204)
        created = int(json.loads(body).get("created_at_ms", 0))
        with self._lock:
            self._receipts.event_ids.append(event_id)
            if created:
                self._receipts.latencies_ms.append(time.time() * 1000 - created)
        return web.Response(status=204)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner

    def start(self) -> None:
        """Start listening (the end of a ``down`` endpoint's outage)."""
        if self._runner is None:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def close(self) -> None:
        if self._runner is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._runner = None
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def alert_id_of_email(content: bytes) -> str:
    """The alert id in an email's subject (``alert ID``, the scenario's template); else ''."""
    subject = str(email.message_from_bytes(content, policy=default_policy).get("Subject", ""))
    return subject[len(SUBJECT_PREFIX) :].strip() if subject.startswith(SUBJECT_PREFIX) else ""


class _Collect:
    def __init__(self) -> None:
        self.alert_ids: list[str] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.alert_ids.append(alert_id_of_email(envelope.content))
        return "250 OK"


class MailServer:
    """A real SMTP server on 127.0.0.1 that can be stopped and started on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self._handler = _Collect()
        self._controller: Any = None

    @property
    def alert_ids(self) -> list[str]:
        with self._handler.lock:
            return list(self._handler.alert_ids)

    def start(self) -> None:
        from aiosmtpd.controller import Controller

        if self._controller is None:
            self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)
            self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            with contextlib.suppress(Exception):
                self._controller.stop()
            self._controller = None


class SinkProcess:
    """A sink as a child process (its own session), logging to ``log``."""

    def __init__(self, args: Sequence[str], settings: Settings, log: Path) -> None:
        self.args = list(args)
        self.settings = settings
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=child_env(self.settings), start_new_session=True,
            )  # fmt: skip

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def close(self, timeout_s: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def webhook_sink(
    settings: Settings, subscriptions: Path, delays: Sequence[float], reset_s: float, home: Path
) -> tuple[SinkProcess, Path]:
    ready = home / "webhooks.ready"
    ready.unlink(missing_ok=True)
    args = [
        sys.executable, "-m", "fraud.tools.faults.sinkchild", "--subscriptions",
        str(subscriptions), *kafka_args(settings), "--app-id", settings.app_id,
        "--retry-delays", ",".join(f"{d:g}" for d in delays), "--breaker-reset-s", f"{reset_s:g}",
        "--ready-file", str(ready),
    ]  # fmt: skip
    return SinkProcess(args, settings, home / "webhooks.log"), ready


def notifier(settings: Settings, config: Path, home: Path) -> SinkProcess:
    args = [
        sys.executable, "-m", "fraud", "notifier", "--config", str(config),
        "--brokers", settings.brokers, "--topic-prefix", settings.topic_prefix,
        "--app-id", settings.app_id,
    ]  # fmt: skip
    return SinkProcess(args, settings, home / "notifier.log")


def wait_file(path: Path, proc: SinkProcess, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.exited() is not None:
            raise HarnessError(f"{proc.args[2]} exited before it was ready (see {proc.log})")
        if time.monotonic() > deadline:
            raise HarnessError(f"{proc.log.stem} not ready after {timeout_s:.0f} s")
        time.sleep(0.05)


def subscriptions_toml(endpoints: Sequence[tuple[str, str, str, float]]) -> str:
    """The subscriptions file: (id, url, secret, timeout_s) each, every alert to every one."""
    parts = []
    for sub_id, url, secret, timeout_s in endpoints:
        parts.append(
            f'[[subscription]]\nid = "{sub_id}"\nurl = "{url}"\nsecrets = ["{secret}"]\n'
            f'min_action = "REVIEW"\nmax_concurrency = 4\ntimeout_s = {timeout_s:g}\n'
        )
    return "\n".join(parts)


def notifier_toml(smtp_port: int, breaker_reset_s: float) -> str:
    """Every alert mailed once to one desk address: no rate limit, no de-duplication."""
    return (
        "rate_limit_per_minute = 0\ndedupe_window_s = 0\n\n"
        f'[smtp]\nhost = "127.0.0.1"\nport = {smtp_port}\nstarttls = false\n'
        'sender = "Fault Suite <faults@example.com>"\ntimeout_s = 2\n\n'
        f"[delivery]\nbreaker_reset_s = {breaker_reset_s:g}\n\n"
        '[[route]]\nname = "desk"\ntopic = "alerts"\nformat = "alert"\nchannel = "email"\n'
        'to = ["fraud-desk@example.com"]\ntemplate = "faults"\n\n'
        f'[templates.faults]\nsubject = "{SUBJECT_PREFIX}${{alert_id}}"\nbody = "${{alert_id}}"\n'
    )


def webhook_dead_letters(settings: Settings, endpoint: str) -> list[DeadLetterSeen]:
    """Every webhook dead letter of ``endpoint``, re-driven ones included."""
    entries = list_dead_letters(settings, endpoint=endpoint, include_redriven=True, timeout_s=30)
    return [DeadLetterSeen(e.envelope.event_id, e.letter.reason, e.letter.detail) for e in entries]


def notifier_dead_letters(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """The alert ids of the notifier's ``send_failed`` dead letters, re-driven ones included."""
    entries = notifier_dlq.list_dead_letters(settings, include_redriven=True, timeout_s=timeout_s)
    return [e.event_id for e in entries if e.letter.reason == SEND_FAILED]


def _fraud_dlq_redrive(settings: Settings, options: Sequence[str], log: Path) -> int:
    """``fraud dlq redrive OPTIONS`` in a child process: the count of its ``re-driven: N`` line."""
    args = [
        sys.executable, "-m", "fraud", "dlq", "redrive", *options,
        "--brokers", settings.brokers, "--topic-prefix", settings.topic_prefix,
        "--partitions", str(settings.partitions),
    ]  # fmt: skip
    done = subprocess.run(
        args, capture_output=True, text=True, env=child_env(settings), timeout=120, check=False
    )
    with log.open("a") as out:
        out.write(f"$ {' '.join(args[1:])}\n{done.stdout}{done.stderr}\n")
    what = " ".join(["fraud dlq redrive", *options])
    if done.returncode != 0:
        raise HarnessError(f"{what} exited {done.returncode}")
    for line in done.stdout.splitlines():
        if line.startswith("re-driven:"):
            return int(line.split(":", 1)[1].split()[0])
    raise HarnessError(f"{what} printed no count: {done.stdout!r}")


def redrive(settings: Settings, endpoint: str, log: Path) -> int:
    """``fraud dlq redrive --endpoint ENDPOINT``: the number of letters it says it re-drove."""
    return _fraud_dlq_redrive(settings, ["--endpoint", endpoint], log)


def redrive_notifier(settings: Settings, config: Path, log: Path) -> int:
    """``fraud dlq redrive --sink notifier --all --config CONFIG``: the letters it says it sent."""
    return _fraud_dlq_redrive(settings, ["--sink", "notifier", "--all", "--config", str(config)],
                              log)  # fmt: skip
