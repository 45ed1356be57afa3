"""Email sender: one SMTP transaction per notification with aiosmtplib (STARTTLS if configured)."""

from __future__ import annotations

import asyncio
import email.utils
from email.message import EmailMessage

import aiosmtplib

from fraud.sinks.notify.routing import Notification, SendError, SmtpConfig

__all__ = ["EmailSender", "build_message"]


def build_message(config: SmtpConfig, notification: Notification) -> EmailMessage:
    """A plain-text UTF-8 message from ``config.sender`` to the notification's one recipient."""
    msg = EmailMessage()
    msg["From"] = config.sender
    msg["To"] = notification.to
    msg["Subject"] = notification.subject
    msg["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    _, sender_address = email.utils.parseaddr(config.sender)
    domain = sender_address.rpartition("@")[2] or None
    msg["Message-ID"] = email.utils.make_msgid(domain=domain)
    msg["X-Fraud-Route"] = notification.route
    msg.set_content(notification.body)
    return msg


def _smtp_error(exc: Exception) -> SendError:
    """Retry connection problems, timeouts and 4xx replies; give up on 5xx and refusals."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        retryable = bool(codes) and all(400 <= c < 500 for c in codes)
        detail = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        return SendError(f"smtp recipients refused: {detail}", retryable=retryable)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return SendError(
            f"smtp {exc.code}: {exc.message}", retryable=400 <= exc.code < 500 or exc.code < 0
        )
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | asyncio.TimeoutError | TimeoutError):
        return SendError(f"smtp timeout: {exc}", retryable=True)
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | OSError):
        return SendError(f"smtp connection failed: {exc}", retryable=True)
    if isinstance(exc, aiosmtplib.SMTPException):
        return SendError(f"smtp error: {exc}", retryable=False)
    return SendError(f"smtp error: {type(exc).__name__}: {exc}", retryable=False)


class EmailSender:
    """Sends a Notification as an email; raises SendError on failure."""

    channel = "email"

    def __init__(self, config: SmtpConfig) -> None:
        self.config = config

    async def send(self, notification: Notification) -> None:
        cfg = self.config
        message = build_message(cfg, notification)
        try:
            await asyncio.wait_for(
                aiosmtplib.send(
                    message,
                    recipients=[notification.to],
                    hostname=cfg.host,
                    port=cfg.port,
                    username=cfg.username,
                    password=cfg.password.reveal() if cfg.password else None,
                    start_tls=cfg.starttls,
                    timeout=cfg.timeout_s,
                ),
                # a bound on the whole transaction, not only on each read
                timeout=cfg.timeout_s * 3,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise _smtp_error(exc) from exc

    async def close(self) -> None:
        """Nothing to release: each send opens and closes its own connection."""
