"""Sending through real SMTP servers (aiosmtpd, see conftest.py): TLS, AUTH and what failures mean."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any

import aiosmtplib
import pytest

from channels.email.compose import compose, new_message_id, reply_address
from channels.email.send import SmtpSender, SmtpSettings, classify, redact
from hub.errors import PermanentError, TransientError
from hub.model import Attachment, OutboundMessage, ThreadHints
from tests.channels.email.conftest import USERNAME, SmtpServer

pytestmark = pytest.mark.timeout(30)

MakeReply = Callable[..., Any]

REJECTED = "550 5.1.1 <customer@example.org>: Recipient address rejected"


@pytest.fixture
def reply() -> MakeReply:
    """A composed reply from conversation 1234, as the email channel would build it."""

    def make(message_id: str = "<m1@example.com>", **overrides: Any) -> Any:
        values: dict[str, Any] = {
            "message_id": 7,
            "conversation_id": 1234,
            "channel": "support-mail",
            "recipient": "customer@example.org",
            "text": "Hello,\n\nyour parcel left today.",
            "author_name": "Alice",
            "created_at": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
            "thread": ThreadHints(subject="Where is my parcel?"),
        }
        return compose(
            OutboundMessage(**(values | overrides)),
            from_address="support@example.com",
            from_name="Example Support",
            reply_to=reply_address("support@example.com", 1234),
            message_id=message_id,
            in_reply_to="<customer-2@example.org>",
            references=["<customer-1@example.org>", "<m0@example.com>", "<customer-2@example.org>"],
        )

    return make


async def test_delivered_message(smtp_server: SmtpServer, reply: MakeReply) -> None:
    binary = bytes(range(256)) * 100
    message = reply(attachments=(Attachment("scan.pdf", "application/pdf", binary),))

    sent = await SmtpSender(smtp_server.settings()).send(message)

    assert sent == "<m1@example.com>"
    [delivery] = smtp_server.inbox.deliveries
    assert (delivery.mail_from, delivery.rcpt_tos) == ("support@example.com", ["customer@example.org"])
    m = delivery.message()
    assert str(m["From"]) == "Alice via Example Support <support@example.com>"
    assert m["Reply-To"].addresses[0].addr_spec == "support+c1234@example.com"
    assert m["Message-ID"] == "<m1@example.com>"
    assert m["In-Reply-To"] == "<customer-2@example.org>"
    assert m["References"].split() == [
        "<customer-1@example.org>",
        "<m0@example.com>",
        "<customer-2@example.org>",
    ]
    assert m["Subject"] == "Re: Where is my parcel?"
    assert m["Auto-Submitted"] == "no"
    alternative = next(part for part in m.walk() if part.get_content_type() == "multipart/alternative")
    assert [p.get_content_type() for p in alternative.iter_parts()] == ["text/plain", "text/html"]
    [attachment] = m.iter_attachments()
    assert attachment.get_filename() == "scan.pdf"
    assert attachment.get_payload(decode=True) == binary


async def test_starttls_and_auth(starttls_server: SmtpServer, reply: MakeReply) -> None:
    assert await SmtpSender(starttls_server.settings()).send(reply()) == "<m1@example.com>"
    [delivery] = starttls_server.inbox.deliveries
    assert delivery.login == USERNAME


async def test_implicit_tls_and_auth(tls_server: SmtpServer, reply: MakeReply) -> None:
    assert await SmtpSender(tls_server.settings()).send(reply()) == "<m1@example.com>"
    [delivery] = tls_server.inbox.deliveries
    assert delivery.login == USERNAME


@pytest.mark.parametrize("server", ["starttls_server", "tls_server"])
async def test_bad_password_is_permanent(
    request: pytest.FixtureRequest, server: str, reply: MakeReply
) -> None:
    smtp: SmtpServer = request.getfixturevalue(server)
    with pytest.raises(PermanentError, match=r"^535 5\.7\.8 Authentication credentials invalid"):
        await SmtpSender(smtp.settings(password="wrong")).send(reply())
    assert smtp.inbox.deliveries == []


async def test_untrusted_certificate_is_refused(starttls_server: SmtpServer, reply: MakeReply) -> None:
    # Verification is on by default: the self-signed certificate is trusted only through ca_file.
    with pytest.raises(TransientError, match="CERTIFICATE_VERIFY_FAILED"):
        await SmtpSender(starttls_server.settings(ca_file=None)).send(reply())
    assert starttls_server.inbox.deliveries == []


async def test_starttls_is_never_skipped(smtp_server: SmtpServer, reply: MakeReply) -> None:
    """A server that does not offer STARTTLS (or an attacker who strips it) gets nothing in the clear."""
    settings = smtp_server.settings(security="starttls", verify=False)
    with pytest.raises(TransientError, match="STARTTLS"):
        await SmtpSender(settings).send(reply())
    assert smtp_server.inbox.deliveries == []


@pytest.mark.parametrize(
    ("rcpt_reply", "data_reply", "error", "text"),
    [
        ("451 4.3.0 try later", None, TransientError, "451 4.3.0 try later"),
        (None, "451 4.3.0 try later", TransientError, "451 4.3.0 try later"),
        (None, "421 4.7.0 too many connections", TransientError, "421 4.7.0 too many connections"),
        (REJECTED, None, PermanentError, REJECTED),
        (None, "554 5.7.1 Message rejected as spam", PermanentError, "554 5.7.1 Message rejected as spam"),
    ],
)
async def test_server_replies(
    smtp_server: SmtpServer,
    reply: MakeReply,
    rcpt_reply: str | None,
    data_reply: str | None,
    error: type[Exception],
    text: str,
) -> None:
    smtp_server.inbox.rcpt_reply, smtp_server.inbox.data_reply = rcpt_reply, data_reply
    with pytest.raises(error) as raised:
        await SmtpSender(smtp_server.settings()).send(reply())
    assert str(raised.value) == text
    assert smtp_server.inbox.deliveries == []


async def test_retry_reuses_the_message_id(smtp_server: SmtpServer, reply: MakeReply) -> None:
    stored_id = new_message_id("example.com")  # stored with the outbox row before the first attempt
    sender = SmtpSender(smtp_server.settings())
    smtp_server.inbox.data_reply = "451 4.3.0 try later"
    with pytest.raises(TransientError):
        await sender.send(reply(stored_id))

    smtp_server.inbox.data_reply = None
    assert await sender.send(reply(stored_id)) == stored_id
    assert smtp_server.inbox.only()["Message-ID"] == stored_id


async def test_server_down_is_transient(reply: MakeReply) -> None:
    with socket.socket() as bound:  # bound but not listening: connections are refused
        bound.bind(("127.0.0.1", 0))
        settings = SmtpSettings(host="127.0.0.1", port=bound.getsockname()[1], security="none", timeout=2)
        with pytest.raises(TransientError, match=r"Error connecting to 127\.0\.0\.1"):
            await SmtpSender(settings).send(reply())


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """Accepts connections and never says a word."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in writers:
        writer.close()
        await writer.wait_closed()
    server.close()
    await server.wait_closed()


async def test_timeout_is_transient(silent_server: int, reply: MakeReply) -> None:
    settings = SmtpSettings(host="127.0.0.1", port=silent_server, security="none", timeout=0.2)
    with pytest.raises(TransientError, match="Timed out"):
        await SmtpSender(settings).send(reply())


async def test_header_injection_reaches_nobody(smtp_server: SmtpServer, reply: MakeReply) -> None:
    evil = "x\r\nBcc: victim@example.net\r\nTo: victim@example.net"
    await SmtpSender(smtp_server.settings()).send(reply(author_name=evil, thread=ThreadHints(subject=evil)))
    [delivery] = smtp_server.inbox.deliveries
    assert delivery.rcpt_tos == ["customer@example.org"]
    m = delivery.message()
    assert m.get_all("To") == ["customer@example.org"]
    assert m["Bcc"] is None


async def test_message_needs_a_message_id(reply: MakeReply) -> None:
    message = reply()
    del message["Message-ID"]
    sender = SmtpSender(SmtpSettings(host="127.0.0.1", port=25, security="none"))
    with pytest.raises(ValueError, match="Message-ID"):
        await sender.send(message)


@pytest.mark.parametrize(
    ("exc", "error", "text"),
    [
        (aiosmtplib.SMTPResponseException(451, "4.3.0 try later"), TransientError, "451 4.3.0 try later"),
        (aiosmtplib.SMTPDataError(552, "5.3.4 too big"), PermanentError, "552 5.3.4 too big"),
        (aiosmtplib.SMTPSenderRefused(553, "5.7.1 not yours", "a@b"), PermanentError, "553 5.7.1 not yours"),
        (aiosmtplib.SMTPAuthenticationError(454, "4.7.0 try later"), TransientError, "454 4.7.0 try later"),
        (aiosmtplib.SMTPConnectResponseError(554, "go away"), PermanentError, "554 go away"),
        (
            aiosmtplib.SMTPRecipientsRefused(
                [
                    aiosmtplib.SMTPRecipientRefused(450, "4.2.0 busy", "a@b"),
                    aiosmtplib.SMTPRecipientRefused(451, "4.3.0 later", "c@d"),
                ]
            ),
            TransientError,
            "450 4.2.0 busy; 451 4.3.0 later",
        ),
        (
            aiosmtplib.SMTPRecipientsRefused(
                [
                    aiosmtplib.SMTPRecipientRefused(450, "4.2.0 busy", "a@b"),
                    aiosmtplib.SMTPRecipientRefused(550, "5.1.1 unknown", "c@d"),
                ]
            ),
            PermanentError,
            "450 4.2.0 busy; 550 5.1.1 unknown",
        ),
        (
            aiosmtplib.SMTPNotSupported("SMTPUTF8 is not supported"),
            PermanentError,
            "SMTPUTF8 is not supported",
        ),
        (aiosmtplib.SMTPServerDisconnected("lost"), TransientError, "lost"),
        (aiosmtplib.SMTPReadTimeoutError("Timed out"), TransientError, "Timed out"),
        (aiosmtplib.SMTPException("No suitable authentication method found."), TransientError, None),
        (ConnectionResetError("reset by peer"), TransientError, "connection failed: reset by peer"),
        (TimeoutError(), TransientError, "connection failed"),
    ],
)
def test_classify(exc: Exception, error: type[Exception], text: str | None) -> None:
    result = classify(exc)
    assert type(result) is error
    if text is not None:
        assert str(result) == text


@pytest.mark.parametrize(
    ("settings", "problem"),
    [
        ({"host": "smtp.example.com", "security": "none"}, "only on loopback"),
        ({"host": "10.0.0.1", "security": "none"}, "only on loopback"),
        ({"host": "smtp.example.com", "security": "ssl"}, "starttls, tls or none"),
        ({"host": "smtp.example.com", "timeout": 0}, "positive"),
    ],
)
def test_settings_are_checked(settings: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        SmtpSettings(**settings)


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "[::1]", "localhost", "127.5.6.7"])
def test_plain_smtp_on_loopback(host: str) -> None:
    assert SmtpSettings(host=host, security="none").security == "none"


def test_password_is_not_in_repr() -> None:
    assert "hunter2" not in repr(SmtpSettings(host="smtp.example.com", username="u", password="hunter2"))


def test_addresses_are_redacted_for_the_log() -> None:
    assert redact(REJECTED) == "550 5.1.1 <c…@example.org>: Recipient address rejected"
    assert redact("to a.b+c@x.y, d@e") == "to a…@x.y, d…@e"


async def test_refusal_is_logged_without_the_address(
    smtp_server: SmtpServer, reply: MakeReply, caplog: pytest.LogCaptureFixture
) -> None:
    smtp_server.inbox.rcpt_reply = REJECTED
    with pytest.raises(PermanentError):
        await SmtpSender(smtp_server.settings()).send(reply())
    assert "Recipient address rejected" in caplog.text
    assert "customer@example.org" not in caplog.text
