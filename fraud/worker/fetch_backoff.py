"""Client-side long polling for aiokafka consumers.

Kafka holds an empty fetch request for up to ``fetch.max.wait.ms`` before answering, so an idle
consumer asks a few times a second. The embedded broker (noida-db) answers empty fetches at
once, and aiokafka then re-fetches at once: an idle consumer burned about 90% of a core here
(measured), and the demo's two sinks starved the worker. ``install()`` makes aiokafka pause
after an empty fetch that came back sooner than its ``fetch_max_wait_ms``, for the rest of that
wait but at most ``MAX_PAUSE_S``. Against a broker that long-polls (any Kafka) an empty fetch
only returns after the wait, so the pause never applies; records arriving mid-pause are at
most ``MAX_PAUSE_S`` late. Installed by the processes that consume with aiokafka (the worker
through Faust, the sinks). ``counts()`` says how many empty fetches came back and how many of
them paused (none against Kafka: tests/integration/test_brokers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

from aiokafka.consumer.fetcher import Fetcher

MAX_PAUSE_S = 0.002
_INSTALLED = "_fraud_empty_fetch_backoff"


_pause_s = MAX_PAUSE_S


@dataclass
class Counts:
    empty_fetches: int = 0  # fetch responses without records
    pauses: int = 0  # of those, the ones that came back early and paused


_counts = Counts()


def counts() -> Counts:
    """A copy of this process's counts since start."""
    return Counts(_counts.empty_fetches, _counts.pauses)


def install(max_pause_s: float | None = None) -> None:
    """Wrap aiokafka's per-request fetch once per process (idempotent); ``max_pause_s``
    (default ``MAX_PAUSE_S``) sets the longest pause for the whole process."""
    global _pause_s
    if max_pause_s is not None:
        _pause_s = max_pause_s
    if getattr(Fetcher, _INSTALLED, False):
        return
    original = Fetcher._proc_fetch_request

    async def proc_fetch_request(self: Any, assignment: Any, node_id: Any, request: Any) -> Any:
        started = time.monotonic()
        got_records = await original(self, assignment, node_id, request)
        if not got_records:
            _counts.empty_fetches += 1
            left = self._fetch_max_wait_ms / 1000 - (time.monotonic() - started)
            if left > 0:
                _counts.pauses += 1
                # aiokafka cancels in-flight fetches on close and expects them to return
                # (its own code returns False on cancellation); do the same.
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.sleep(min(left, _pause_s))
        return got_records

    Fetcher._proc_fetch_request = proc_fetch_request
    setattr(Fetcher, _INSTALLED, True)
