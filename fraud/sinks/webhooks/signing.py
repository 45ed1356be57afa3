"""HMAC-SHA256 signatures for alert webhooks (a Stripe-like scheme).

Every delivery is a JSON ``POST`` with three headers:

* ``Fraud-Event-Id``: the id of the event (receivers de-duplicate on it; retries reuse it).
* ``Fraud-Timestamp``: unix seconds (an integer) at signing time.
* ``Fraud-Signature``: ``v1=<hex>`` per active secret, joined by ``", "``, where ``<hex>`` is
  ``HMAC-SHA256(secret, f"{timestamp}.".encode() + raw_body)``. Several secrets let a subscription
  rotate its secret without a gap: sign with ``[old, new]`` until every receiver has ``new``.

The signature covers the timestamp and the body, not the event-id header: a receiver that needs a
tamper-proof id takes it from the (signed) body. The timestamp bounds replays to ``tolerance_s``.

A receiver verifies the *raw* body bytes before parsing any JSON (aiohttp)::

    import json
    import time

    from aiohttp import web

    from fraud.sinks.webhooks.signing import SignatureError, verify

    SECRETS = [b"whsec-current", b"whsec-previous"]

    async def alerts(request: web.Request) -> web.Response:
        body = await request.read()  # raw bytes, exactly as sent
        try:
            event_id = verify(SECRETS, request.headers, body, now_s=int(time.time()))
        except SignatureError as exc:
            return web.Response(status=400, text=str(exc))
        if already_processed(event_id):  # retries re-send the same event id
            return web.Response(status=200)
        handle_alert(json.loads(body))
        return web.Response(status=204)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence

__all__ = [
    "EVENT_ID_HEADER",
    "SCHEME",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SignatureError",
    "compute_signature",
    "sign",
    "verify",
]

EVENT_ID_HEADER = "Fraud-Event-Id"
TIMESTAMP_HEADER = "Fraud-Timestamp"
SIGNATURE_HEADER = "Fraud-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_S = 300

_TIMESTAMP_RE = re.compile(r"[0-9]{1,15}")
_MAX_CANDIDATES = 16  # signatures looked at per request (bounds the work an attacker can cause)


class SignatureError(ValueError):
    """The request is not a valid, fresh, signed delivery; ``str(exc)`` says why."""


def compute_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``f"{timestamp}.".encode() + body`` under ``secret`` (no prefix)."""
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secrets: Sequence[bytes], event_id: str, body: bytes, now_s: int) -> dict[str, str]:
    """Headers for one delivery of ``body``: event id, timestamp ``now_s`` and ``v1=`` per secret.

    Raises ``ValueError`` without secrets, with an empty secret, or with an event id that is empty
    or holds characters that cannot go in an HTTP header value (control characters).
    """
    if isinstance(secrets, bytes | bytearray):
        raise TypeError("secrets must be a sequence of bytes, not bytes itself")
    if not secrets:
        raise ValueError("at least one secret is needed to sign")
    if any(not secret for secret in secrets):
        raise ValueError("empty secret")
    if not event_id or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in event_id):
        raise ValueError(f"invalid event id {event_id!r}")
    if now_s < 0:
        raise ValueError(f"negative timestamp {now_s}")
    signatures = ", ".join(
        f"{SCHEME}={compute_signature(secret, now_s, body)}" for secret in secrets
    )
    return {
        EVENT_ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(now_s),
        SIGNATURE_HEADER: signatures,
    }


def _header(lowered: Mapping[str, str], name: str) -> str:
    value = lowered.get(name.lower())
    if value is None or not value.strip():
        raise SignatureError(f"missing header {name}")
    return value.strip()


def verify(
    secrets: Sequence[bytes] | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now_s: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> str:
    """Check a delivery and return its event id; raise ``SignatureError`` saying why not.

    Valid when the timestamp is within ``tolerance_s`` of ``now_s`` (either way) and any of
    ``secrets`` produced any ``v1=`` signature of the header. Header names match case-insensitively.
    Every (secret, signature) pair is compared with ``hmac.compare_digest``, all of them, whatever
    matched earlier. Unknown schemes in the signature header (e.g. a future ``v2=``) are ignored.
    """
    keys: list[bytes] = [secrets] if isinstance(secrets, bytes | bytearray) else list(secrets)
    if not keys or any(not key for key in keys):
        raise ValueError("verify needs at least one non-empty secret")  # receiver misconfigured
    if tolerance_s < 0:
        raise ValueError(f"negative tolerance {tolerance_s}")

    lowered = {name.lower(): value for name, value in headers.items()}
    event_id = _header(lowered, EVENT_ID_HEADER)
    raw_timestamp = _header(lowered, TIMESTAMP_HEADER)
    raw_signatures = _header(lowered, SIGNATURE_HEADER)

    if not _TIMESTAMP_RE.fullmatch(raw_timestamp):
        raise SignatureError(f"malformed timestamp {raw_timestamp[:32]!r} (expected unix seconds)")
    timestamp = int(raw_timestamp)
    age = now_s - timestamp
    if age > tolerance_s:
        raise SignatureError(f"timestamp too old: {age} s ago, tolerance {tolerance_s} s")
    if -age > tolerance_s:
        raise SignatureError(f"timestamp in the future: {-age} s ahead, tolerance {tolerance_s} s")

    candidates: list[bytes] = []
    for item in raw_signatures.split(","):
        scheme, sep, value = item.strip().partition("=")
        if sep and scheme == SCHEME:
            candidates.append(value.strip().encode("utf-8", "replace"))
    if not candidates:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header: no {SCHEME}= signature")
    if len(candidates) > _MAX_CANDIDATES:
        raise SignatureError(f"too many signatures ({len(candidates)} > {_MAX_CANDIDATES})")

    expected = [compute_signature(key, timestamp, body).encode("ascii") for key in keys]
    matched = False
    for want in expected:
        for got in candidates:
            matched |= hmac.compare_digest(want, got)
    if not matched:
        raise SignatureError("no valid signature: body, timestamp or secret do not match")
    return event_id
