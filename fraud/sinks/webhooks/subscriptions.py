"""Webhook subscriptions: a TOML file, validated, re-read at run time when it changes.

Format (one table per subscription)::

    [[subscription]]
    id = "acme-risk"                      # unique; part of the event id the receiver sees
    url = "https://hooks.acme.example/fraud"
    secrets = ["whsec-new", "whsec-old"]   # every one signs (rotation without a gap)
    min_action = "REVIEW"                  # "REVIEW" (REVIEW and BLOCK) or "BLOCK" (BLOCK only)
    min_score = 0.0                        # decision score >= this, in [0, 1]
    types = ["fraud.review", "fraud.block"]  # optional: alert types; absent = every type
    max_concurrency = 4                    # deliveries in flight to this endpoint at once
    timeout_s = 5                          # whole request, connect to last byte

``SubscriptionWatcher`` re-reads the file when its modification stamp changes (looked at no more
than once per ``interval_s``); a file that does not parse or validate is logged and the running
set is kept. Secrets never appear in ``repr``.
"""

from __future__ import annotations

import logging
import math
import os
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fraud.v1.alert_pb2 import Alert
from fraud.v1.decision_pb2 import Action

__all__ = [
    "ACTIONS",
    "Subscription",
    "SubscriptionError",
    "SubscriptionWatcher",
    "load_subscriptions",
    "parse_subscriptions",
]

log = logging.getLogger(__name__)

ACTIONS: dict[str, int] = {"REVIEW": Action.REVIEW, "BLOCK": Action.BLOCK}
_KEYS = {"id", "url", "secrets", "min_action", "min_score", "types", "max_concurrency", "timeout_s"}
MAX_ID_LENGTH = 128


class SubscriptionError(ValueError):
    """The subscriptions file cannot be read, parsed or validated; ``str(exc)`` says where."""


@dataclass(frozen=True)
class Subscription:
    id: str
    url: str
    secrets: tuple[bytes, ...] = field(repr=False)
    min_action: int = Action.REVIEW
    min_score: float = 0.0
    types: frozenset[str] | None = None
    max_concurrency: int = 4
    timeout_s: float = 5.0

    def __repr__(self) -> str:
        types = sorted(self.types) if self.types is not None else None
        return (
            f"Subscription(id={self.id!r}, url={self.url!r}, secrets=<{len(self.secrets)} masked>, "
            f"min_action={Action.Name(self.min_action)}, min_score={self.min_score}, "
            f"types={types}, max_concurrency={self.max_concurrency}, timeout_s={self.timeout_s})"
        )

    __str__ = __repr__

    def matches(self, alert: Alert) -> bool:
        """Does ``alert`` go to this subscription (action, score and type filters)?"""
        decision = alert.decision
        if decision.action < self.min_action:
            return False
        if not decision.score >= self.min_score:  # also refuses a NaN score
            return False
        return self.types is None or alert.type in self.types


def _fail(
    source: str, index: int | None, message: str, sub_id: str | None = None
) -> SubscriptionError:
    where = source if index is None else f"{source}: subscription #{index + 1}"
    if sub_id is not None:
        where += f" ({sub_id})"
    return SubscriptionError(f"{where}: {message}")


def _number(raw: Any, name: str, fail: Callable[[str], SubscriptionError]) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise fail(f"{name} must be a number, not {type(raw).__name__}")
    value = float(raw)
    if not math.isfinite(value):
        raise fail(f"{name} must be finite")
    return value


def _one(table: Mapping[str, Any], source: str, index: int) -> Subscription:
    def fail(message: str) -> SubscriptionError:
        return _fail(source, index, message)

    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise fail(f"unknown key(s) {', '.join(unknown)}")
    sub_id = table.get("id")
    if not isinstance(sub_id, str) or not sub_id.strip():
        raise fail("id is required (a non-empty string)")
    if len(sub_id) > MAX_ID_LENGTH or any(ord(c) < 0x21 or ord(c) == 0x7F for c in sub_id):
        raise fail(f"id {sub_id!r} must be at most {MAX_ID_LENGTH} visible characters")

    def fail_id(message: str) -> SubscriptionError:
        return _fail(source, index, message, sub_id)

    url = table.get("url")
    if not isinstance(url, str):
        raise fail_id("url is required (a string)")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise fail_id(f"url {url!r} must be an absolute http:// or https:// URL")

    secrets = table.get("secrets")
    if (
        not isinstance(secrets, list)
        or not secrets
        or not all(isinstance(s, str) and s for s in secrets)
    ):
        raise fail_id("secrets must be a non-empty list of non-empty strings")

    raw_action = table.get("min_action", "REVIEW")
    if raw_action not in ACTIONS:
        raise fail_id(f"min_action must be one of {', '.join(ACTIONS)}, not {raw_action!r}")

    min_score = _number(table.get("min_score", 0.0), "min_score", fail_id)
    if not 0.0 <= min_score <= 1.0:
        raise fail_id(f"min_score must be in [0, 1], not {min_score}")

    raw_types = table.get("types")
    types: frozenset[str] | None = None
    if raw_types is not None:
        if not isinstance(raw_types, list) or not all(isinstance(t, str) and t for t in raw_types):
            raise fail_id("types must be a list of non-empty strings")
        types = frozenset(raw_types)

    concurrency = table.get("max_concurrency", 4)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise fail_id(f"max_concurrency must be an integer >= 1, not {concurrency!r}")

    timeout_s = _number(table.get("timeout_s", 5.0), "timeout_s", fail_id)
    if not 0 < timeout_s <= 300:
        raise fail_id(f"timeout_s must be in (0, 300], not {timeout_s}")

    return Subscription(
        id=sub_id,
        url=url,
        secrets=tuple(s.encode() for s in secrets),
        min_action=ACTIONS[raw_action],
        min_score=min_score,
        types=types,
        max_concurrency=concurrency,
        timeout_s=timeout_s,
    )


def parse_subscriptions(text: str, source: str = "<subscriptions>") -> tuple[Subscription, ...]:
    """Subscriptions from TOML text; raise ``SubscriptionError`` naming ``source`` and the entry.

    A file without any ``[[subscription]]`` is valid (nothing is delivered).
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _fail(source, None, f"not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"subscription"})
    if unknown:
        raise _fail(source, None, f"unknown top-level key(s) {', '.join(unknown)}")
    tables = doc.get("subscription", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise _fail(source, None, "'subscription' must be an array of tables ([[subscription]])")
    subs = tuple(_one(t, source, i) for i, t in enumerate(tables))
    seen: set[str] = set()
    for sub in subs:
        if sub.id in seen:
            raise _fail(source, None, f"duplicate subscription id {sub.id!r}")
        seen.add(sub.id)
    return subs


def load_subscriptions(path: Path) -> tuple[Subscription, ...]:
    """``parse_subscriptions`` of a file (UTF-8); unreadable files raise ``SubscriptionError``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SubscriptionError(f"{path}: cannot read: {exc}") from None
    return parse_subscriptions(text, str(path))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class SubscriptionWatcher:
    """The current subscriptions of ``path``; ``poll`` re-reads the file after it changed.

    The first load happens in the constructor and raises ``SubscriptionError`` (a service should
    not start on a broken file). Later failures keep the running set and are logged once per
    change of the file; ``reloads`` and ``errors`` count what happened.
    """

    def __init__(
        self,
        path: Path,
        *,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self._clock = clock
        self._stamp = _stamp(self.path)
        self._current = load_subscriptions(self.path)
        self._checked_at = clock()
        self.reloads = 0
        self.errors = 0
        self.last_error: str | None = None

    @property
    def current(self) -> tuple[Subscription, ...]:
        return self._current

    def poll(self) -> bool:
        """Re-read the file if it changed and ``interval_s`` passed; True when the set changed."""
        now = self._clock()
        if now - self._checked_at < self.interval_s:
            return False
        self._checked_at = now
        stamp = _stamp(self.path)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            subs = load_subscriptions(self.path)
        except SubscriptionError as exc:
            self.errors += 1
            self.last_error = str(exc)
            log.error("subscriptions not reloaded, keeping %d running: %s", len(self._current), exc)
            return False
        self.last_error = None
        self.reloads += 1
        changed = subs != self._current
        self._current = subs
        log.info("subscriptions reloaded from %s: %s", self.path, [s.id for s in subs])
        return changed
