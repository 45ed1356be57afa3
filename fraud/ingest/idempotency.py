"""What the gateway remembers of accepted requests, so that a retry is not produced twice.

Two memories of the same kind (:class:`Remembered`), both bounded in time and in size, both
pure (the clock is injected: monotonic seconds):

* by ``Idempotency-Key`` header: the digest of the request body and the answer it got. A
  retry with the same key and the same body gets the first answer again, and nothing is
  produced; the same key with another body is refused (422), and a retry while the first is
  still waiting for Kafka is told so (409).
* by transaction id, for requests without the header: the digest of each accepted
  transaction. A transaction accepted before is not produced again; the same id with other
  content is refused (409).

Only accepted requests are remembered: a refused one (400) would be refused again, and a 503
must be retried for real. The scope is one gateway process: a restart forgets, and two
gateways behind a load balancer do not share what they remember.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["PENDING", "Remembered", "digest"]

V = TypeVar("V")


def digest(data: bytes) -> bytes:
    """What is kept of a body or a transaction to tell a retry from a different request."""
    return hashlib.sha256(data).digest()


class _Pending:
    def __repr__(self) -> str:
        return "PENDING"


#: The value of a key whose request is still in flight.
PENDING = _Pending()


@dataclass
class _Entry(Generic[V]):
    digest: bytes
    value: V | _Pending
    expires_at: float


class Remembered(Generic[V]):
    """Keys, each with the digest of what it was first used for and a value, for ``ttl_s``
    seconds after it was stored, at most ``max_keys`` of them (the oldest go first)."""

    def __init__(self, ttl_s: float, max_keys: int, clock: Callable[[], float]) -> None:
        if not ttl_s > 0 or max_keys < 1:
            raise ValueError(f"ttl_s and max_keys must be positive: {ttl_s}, {max_keys}")
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self.clock = clock
        self._entries: OrderedDict[str, _Entry[V]] = OrderedDict()

    def __len__(self) -> int:
        self._expire(self.clock())
        return len(self._entries)

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            first = next(iter(entries.values()))
            if first.expires_at > now:
                break
            entries.popitem(last=False)

    def get(self, key: str) -> tuple[bytes, V | _Pending] | None:
        """The digest and value stored under ``key`` (``PENDING`` while in flight), if any."""
        self._expire(self.clock())
        entry = self._entries.get(key)
        return None if entry is None else (entry.digest, entry.value)

    def hold(self, key: str, data_digest: bytes) -> None:
        """Mark ``key`` as in flight for ``data_digest`` (``store`` or ``forget`` ends it)."""
        self._put(key, _Entry(data_digest, PENDING, self.clock() + self.ttl_s))

    def store(self, key: str, data_digest: bytes, value: V) -> None:
        """Remember ``key``: ``data_digest`` got ``value``, from now for ``ttl_s``."""
        self._put(key, _Entry(data_digest, value, self.clock() + self.ttl_s))

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def _put(self, key: str, entry: _Entry[V]) -> None:
        now = self.clock()
        self._expire(now)
        self._entries.pop(key, None)  # re-stored: now the newest
        self._entries[key] = entry
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
