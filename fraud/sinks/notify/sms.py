"""SMS sender: a generic HTTP gateway, ``POST {"to": ..., "text": ...}`` with a bearer token."""

from __future__ import annotations

import time

import aiohttp

from fraud.sinks.notify.routing import Notification, SendError, SmsConfig
from fraud.sinks.retry import Outcome, classify_with_reason, retry_after_seconds

__all__ = ["SmsSender"]

MAX_ERROR_BODY = 200


class SmsSender:
    """Sends a Notification's body as an SMS text; raises SendError on failure.

    2xx succeeds; no response, 408, 429 and 5xx may be retried; other statuses are given up on
    (the classification of ``fraud.sinks.retry``).
    """

    channel = "sms"

    def __init__(self, config: SmsConfig, session: aiohttp.ClientSession | None = None) -> None:
        self.config = config
        self._session = session
        self._own_session = session is None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s)
            )
        return self._session

    async def send(self, notification: Notification) -> None:
        headers = {"Content-Type": "application/json"}
        if self.config.token is not None:
            headers["Authorization"] = f"Bearer {self.config.token.reveal()}"
        payload = {"to": notification.to, "text": notification.body}
        try:
            async with self._client().post(
                self.config.url,
                json=payload,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                retry_after = retry_after_seconds(resp.headers.get("Retry-After"), time.time())
                text = "" if 200 <= status <= 299 else (await resp.text(errors="replace"))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            got = classify_with_reason(None, f"{type(exc).__name__}: {exc}")
            raise SendError(f"sms gateway {got.reason}", retryable=True) from exc
        got = classify_with_reason(status, None)
        if got.outcome is Outcome.SUCCESS:
            return
        detail = " ".join(text.split())[:MAX_ERROR_BODY]
        raise SendError(
            f"sms gateway {got.reason}" + (f": {detail}" if detail else ""),
            retryable=got.outcome is Outcome.RETRY,
            retry_after=retry_after,
        )

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None
