"""Run the detection worker: warm the kernels, make sure the topics exist, start Faust."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import faust.worker

from fraud.broker import ensure_topics
from fraud.metrics import MetricsServer
from fraud.scoring.policy import Policy, policy_from_settings
from fraud.scoring.warmup import warmup
from fraud.settings import Settings
from fraud.worker.app import create_app, internal_topics
from fraud.worker.policy_topic import PolicyWatcher, policy_topic_spec

log = logging.getLogger("fraud.worker")


class _Worker(faust.worker.Worker):
    """Faust's worker, writing a ready file once recovery is done and the agent runs."""

    def __init__(
        self,
        *args: Any,
        prepare: Callable[[], None],
        close: Callable[[], Awaitable[None]],
        ready_file: Path | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._prepare = prepare
        self._close = close
        self._ready_file = ready_file

    async def on_startup_finished(self) -> None:
        await super().on_startup_finished()
        self._prepare()
        log.warning("fraud worker ready")
        if self._ready_file is not None:
            self._ready_file.write_text(str(time.time()))

    async def on_stop(self) -> None:
        # Agents are cancelled on stop, possibly between queueing output and its flush:
        # deliver what was queued (changelog writes included) before the process exits.
        await self._close()
        await super().on_stop()


def run_worker(
    settings: Settings, *, loglevel: str = "WARNING", ready_file: Path | None = None
) -> int:
    """Block running the worker until SIGTERM/SIGINT; returns the exit code."""
    started = time.perf_counter()
    policy = policy_from_settings(settings)
    warmup()
    log.info("kernels warm in %.2f s", time.perf_counter() - started)
    ensure_topics(settings, [*internal_topics(settings), policy_topic_spec(settings)])
    # Rules and model published on the policy topic win over the files, from the first batch.
    watcher = PolicyWatcher(
        settings, policy, on_policy=lambda _: None, on_error=lambda message: log.error(message)
    )
    policy = watcher.catch_up()
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    built = create_app(settings, policy)
    # Before Faust: init_transactions, here and in no other thread. Left to the first batch,
    # it raced a delivery already running in its thread, which it fenced (purging its records).
    built.fence()

    def prepare() -> None:
        built.prepare()
        loop = asyncio.get_running_loop()

        def swap(new: Policy) -> None:
            # The watcher thread hands the new policy to the event loop; the terminal stage
            # reads its policy once per batch, so a swap lands between two batches.
            loop.call_soon_threadsafe(setattr, built.terminals, "policy", new)

        watcher.on_policy = swap
        watcher.start()

    async def close() -> None:
        watcher.stop()
        await built.close()

    server = None
    if settings.metrics_port is not None:
        server = MetricsServer(settings.metrics_port, settings.metrics_host).start()
        log.warning("metrics on %s", server.url)
    worker = _Worker(
        built.app,
        prepare=prepare,
        close=close,
        loglevel=loglevel,
        quiet=True,
        ready_file=ready_file,
    )
    try:
        worker.execute_from_commandline()
    finally:
        if server is not None:
            server.stop()
    return 0
