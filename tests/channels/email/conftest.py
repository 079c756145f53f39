"""Real SMTP servers for the outbound tests: aiosmtpd in a thread of its own on 127.0.0.1.

``smtp_server`` speaks plain SMTP; ``starttls_server`` requires STARTTLS and AUTH; ``tls_server``
speaks implicit TLS and requires AUTH. Each records what it accepted in ``server.inbox`` and can be
told to refuse (``server.inbox.rcpt_reply`` / ``data_reply``). The self-signed certificate is made
once per session with ``openssl`` and trusted through ``server.ca_file``.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from channels.email.send import SmtpSettings

USERNAME = "agent@example.com"
PASSWORD = "s3cret-pässword"


@dataclass
class Delivery:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    login: str | None

    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class Inbox:
    """An aiosmtpd handler that records deliveries; set a reply to make RCPT or DATA fail."""

    deliveries: list[Delivery] = field(default_factory=list)
    rcpt_reply: str | None = None
    data_reply: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(
        self, server: Any, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if self.rcpt_reply:
            return self.rcpt_reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        if self.data_reply:
            return self.data_reply
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        assert isinstance(envelope.content, bytes) and envelope.mail_from is not None
        with self.lock:
            self.deliveries.append(
                Delivery(envelope.mail_from, list(envelope.rcpt_tos), envelope.content, login)
            )
        return "250 2.0.0 Message accepted for delivery"

    def only(self) -> EmailMessage:
        with self.lock:
            assert len(self.deliveries) == 1, self.deliveries
            return self.deliveries[0].message()


def authenticator(
    server: Any, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == USERNAME.encode()
        and auth_data.password == PASSWORD.encode()
    )
    # handled=False: aiosmtpd answers 235 or "535 5.7.8 Authentication credentials invalid".
    return AuthResult(success=ok, handled=False, auth_data=auth_data)


@dataclass
class SmtpServer:
    host: str
    port: int
    inbox: Inbox
    security: str
    ca_file: str | None = None

    def settings(self, **overrides: Any) -> SmtpSettings:
        values: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "security": self.security,
            "ca_file": self.ca_file,
            "timeout": 5.0,
            "local_hostname": "hub.test",
        }
        if self.security != "none":
            values |= {"username": USERNAME, "password": PASSWORD}
        return SmtpSettings(**(values | overrides))


def free_port() -> int:
    # Controller(port=0) fails its readiness check (PEERS.md): ask the kernel for a port first.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("smtp-tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-nodes", "-days", "2", "-subj", "/CN=localhost"),
            *("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"),
            *("-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return cert, key


def _server_context(certificate: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


class _SMTP(SMTP):
    """aiosmtpd's SMTP, keeping count of open connections and counting implicit TLS as TLS.

    aiosmtpd 1.4.6 counts only STARTTLS as TLS: on an implicit-TLS port it would hide AUTH unless
    ``auth_require_tls=False``, which warns (an error here).
    """

    def __init__(self, *args: Any, sessions: set[SMTP], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sessions = sessions

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        starting = self.transport is None
        super().connection_made(transport)
        if starting:
            self._sessions.add(self)
            if transport.get_extra_info("ssl_object") is not None:
                self._tls_protocol = getattr(transport, "_ssl_protocol", None)

    def connection_lost(self, error: Exception | None) -> None:
        self._sessions.discard(self)
        super().connection_lost(error)


class _Controller(Controller):
    """Stops only after the server side of every connection is closed: a controller stopped while a
    TLS close is under way leaves its socket to the garbage collector (a ResourceWarning)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sessions: set[SMTP] = set()

    def factory(self) -> SMTP:
        return _SMTP(self.handler, sessions=self.sessions, **self.SMTP_kwargs)

    def stop(self, no_assert: bool = False) -> None:
        deadline = time.monotonic() + 2
        while self.sessions and time.monotonic() < deadline:
            time.sleep(0.005)
        for session in list(self.sessions):
            raw = session._original_transport or session.transport
            if raw is not None:
                self.loop.call_soon_threadsafe(raw.abort)  # type: ignore[attr-defined]
        super().stop(no_assert)


def _run(handler: Inbox, security: str, ca_file: str | None, **kwargs: Any) -> Iterator[SmtpServer]:
    port = free_port()
    # server_hostname: without it aiosmtpd asks DNS for this machine's FQDN on every connection.
    controller = _Controller(handler, hostname="127.0.0.1", port=port, server_hostname="mx.test", **kwargs)
    controller.start()
    try:
        yield SmtpServer("127.0.0.1", port, handler, security, ca_file)
    finally:
        controller.stop()


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """Plain SMTP on loopback, no AUTH."""
    yield from _run(Inbox(), "none", None)


@pytest.fixture
def starttls_server(certificate: tuple[Path, Path]) -> Iterator[SmtpServer]:
    """Submission: STARTTLS required, AUTH required and offered only after STARTTLS."""
    yield from _run(
        Inbox(),
        "starttls",
        str(certificate[0]),
        tls_context=_server_context(certificate),
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )


@pytest.fixture
def tls_server(certificate: tuple[Path, Path]) -> Iterator[SmtpServer]:
    """Implicit TLS (submissions, port 465 style) with AUTH required."""
    yield from _run(
        Inbox(),
        "tls",
        str(certificate[0]),
        ssl_context=_server_context(certificate),
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
    )
