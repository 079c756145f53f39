"""Deliver a composed message to the outgoing SMTP server (RFC 5321) with aiosmtplib.

STARTTLS (RFC 3207), implicit TLS (RFC 8314) and AUTH (RFC 4954). Every failure becomes one of the
hub's two errors: a 4xx reply, a lost connection or a timeout is :class:`TransientError` (the outbox
retries with the same Message-ID); a 5xx reply is :class:`PermanentError` whose text, the server's
own (``550 5.1.1 <x@y>: Recipient address rejected``), is shown to the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Literal

import aiosmtplib

from hub.errors import ChannelError, PermanentError, TransientError

log = logging.getLogger(__name__)

Security = Literal["starttls", "tls", "none"]
DEFAULT_PORTS: dict[str, int] = {"starttls": 587, "tls": 465, "none": 25}
_ADDRESS = re.compile(r"([^\s<>@:;,\"']+)@([\w.-]+)")


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    # None: 587 for STARTTLS, 465 for implicit TLS, 25 without TLS.
    port: int | None = None
    # "none" (no TLS at all) is accepted only for a server on the loopback interface.
    security: Security = "starttls"
    # AUTH is used when a username is set.
    username: str | None = None
    # Never shown in repr, logs or tracebacks.
    password: str | None = field(default=None, repr=False)
    # Seconds for connecting and for each SMTP command.
    timeout: float = 30.0
    # Verify the server's certificate and name; turn off only for a server you reach by other trust.
    verify: bool = True
    # PEM file of the CAs to trust instead of the system's (a private relay's own CA).
    ca_file: str | None = None
    # Name sent in EHLO; None: this machine's FQDN.
    local_hostname: str | None = None

    def __post_init__(self) -> None:
        if self.security not in DEFAULT_PORTS:
            raise ValueError(f"smtp security must be starttls, tls or none, not {self.security!r}")
        if self.security == "none" and not _is_loopback(self.host):
            raise ValueError(f"smtp security 'none' is allowed only on loopback, not for {self.host!r}")
        if self.timeout <= 0:
            raise ValueError("smtp timeout must be positive")


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tls_context(settings: SmtpSettings) -> ssl.SSLContext:
    """The client context: the system's CAs or ``ca_file``; no verification only when asked."""
    context = ssl.create_default_context(cafile=settings.ca_file)
    if not settings.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def redact(text: str) -> str:
    """``text`` for the log: ``customer@example.org`` becomes ``c…@example.org``."""
    return _ADDRESS.sub(lambda m: f"{m[1][:1]}…@{m[2]}", text)


def _reply(code: int, message: str) -> str:
    return f"{code} {message}".strip()


def classify(exc: Exception) -> ChannelError:
    """The hub's error for an SMTP failure (table-tested); the server's reply is kept as the text."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        text = "; ".join(_reply(r.code, r.message) for r in exc.recipients) or "all recipients refused"
        if exc.recipients and all(400 <= r.code < 500 for r in exc.recipients):
            return TransientError(text)
        return PermanentError(text)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        text = _reply(exc.code, exc.message)
        if 500 <= exc.code < 600:
            return PermanentError(text)
        return TransientError(text)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        # The message needs an extension the server lacks (SMTPUTF8 for a non-ASCII address).
        return PermanentError(exc.message)
    if isinstance(exc, aiosmtplib.SMTPException):
        # Lost connection, timeout, or STARTTLS / AUTH not offered (a misconfiguration or a downgrade
        # attack: retried, never sent in the clear); the outbox gives up after its attempts.
        return TransientError(exc.message)
    if isinstance(exc, ssl.SSLError):
        return TransientError(f"TLS failed: {exc}")
    if isinstance(exc, OSError | TimeoutError):
        return TransientError(f"connection failed: {exc}" if str(exc) else "connection failed")
    return TransientError(f"{type(exc).__name__}: {exc}")


class SmtpSender:
    """Sends each message over its own connection: connect, STARTTLS, AUTH, one transaction, QUIT.

    ``send`` returns only when the connection's socket is closed (a TLS close waits for the server's
    close_notify; after ``close_timeout`` seconds it is cut), so stopping the hub leaves no socket open.
    """

    # Longest wait for a clean close of the connection after QUIT or a failure.
    close_timeout = 5.0

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._tls = tls_context(settings) if settings.security != "none" else None

    def _client(self) -> aiosmtplib.SMTP:
        s = self.settings
        # STARTTLS and AUTH are done step by step in _deliver, not by connect(), so that a failure
        # there still leaves this code the connection to close.
        return aiosmtplib.SMTP(
            hostname=s.host,
            port=s.port or DEFAULT_PORTS[s.security],
            timeout=s.timeout,
            use_tls=s.security == "tls",
            start_tls=False,
            tls_context=self._tls,
            local_hostname=s.local_hostname,
        )

    async def send(self, message: EmailMessage) -> str:
        """Deliver ``message`` to its To, Cc and Bcc addresses; return its Message-ID.

        Raises :class:`TransientError` or :class:`PermanentError`; never anything else for an SMTP or
        network failure.
        """
        message_id = message["Message-ID"]
        if not message_id:
            raise ValueError("compose the message first: it has no Message-ID")
        try:
            refused = await self._deliver(message)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            error = classify(exc)
            log.warning("smtp %s: %s not sent: %s", self.settings.host, message_id, redact(str(error)))
            raise error from exc
        if refused:
            # Some recipients took it, so retrying would duplicate it for them: report, do not fail.
            log.warning(
                "smtp %s: %s refused for %d recipient(s): %s",
                self.settings.host,
                message_id,
                len(refused),
                redact("; ".join(_reply(r.code, r.message) for r in refused.values())),
            )
        log.info("smtp %s accepted %s", self.settings.host, message_id)
        return str(message_id)

    async def _deliver(self, message: EmailMessage) -> dict[str, aiosmtplib.SMTPResponse]:
        s = self.settings
        client = self._client()
        await client.connect()
        transport = client.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        try:
            if s.security == "starttls":
                # Required, never opportunistic: no STARTTLS offered is an error, not plain text.
                await client.starttls()
            if s.username:
                await client.login(s.username, s.password or "")
            refused, _ = await client.send_message(message)
            # The server has taken responsibility for the message: nothing after this is a failure.
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await client.quit()
            return refused
        finally:
            client.close()
            if transport is not None and sock is not None:
                try:
                    async with asyncio.timeout(self.close_timeout):
                        await _socket_closed(sock)
                except TimeoutError:
                    transport.abort()  # type: ignore[attr-defined]
                    await asyncio.sleep(0)  # the transport closes its socket on the next turn of the loop


async def _socket_closed(sock: Any) -> None:
    """Return once the connection's socket is closed (a TLS close ends after the peer's close_notify)."""
    # Polled: neither the socket nor aiosmtplib's public API signals the close (its protocol may never
    # hear of it when a STARTTLS handshake failed).
    while sock.fileno() != -1:  # noqa: ASYNC110
        await asyncio.sleep(0.002)
