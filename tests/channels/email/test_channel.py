"""EmailChannel against real servers: aiosmtpd out, Dovecot and pymap in.

The hub side is :class:`RecordingHost`, an in-memory implementation of the ChannelHost protocol (the
hub's own interface, not a peer), so these tests stay at channel level.
"""

from __future__ import annotations

import asyncio
import email.policy
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from channels.email.channel import EmailChannel
from channels.email.parse import raw_external_id
from hub.config import load_config
from hub.errors import PermanentError
from hub.model import (
    EventRecord,
    EventType,
    InboundMessage,
    IngestResult,
    MessageStatus,
    OutboundMessage,
    ThreadHints,
    TimelineEntry,
)
from tests.channels.email.conftest import SmtpServer
from tests.peers.imap import DovecotServer, ImapServer

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = b"test-token-secret"


def crlf(raw: bytes) -> bytes:
    """IMAP wants CRLF line ends; the fixture files have LF."""
    return raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def mail(n: int, *, tag: str = "ch", attachment: bytes | None = None) -> bytes:
    msg = EmailMessage()
    msg["From"] = f"Customer {n} <customer{n}@example.net>"
    msg["To"] = "support+c77@example.com"
    msg["Subject"] = f"Question {n}"
    msg["Message-ID"] = f"<{tag}-{n}@example.net>"
    msg.set_content(f"Hello, this is message {n}.\n\n> quoted old text\n")
    if attachment is not None:
        msg.add_attachment(attachment, maintype="application", subtype="octet-stream", filename="big.bin")
    return msg.as_bytes(policy=email.policy.SMTP)


@dataclass
class RecordingHost:
    """Records what the channel asks of the hub; known ids are the ingested and the refused ones."""

    ingested: list[InboundMessage] = field(default_factory=list)
    refusals: list[tuple[str | None, str, str | None]] = field(default_factory=list)
    updates: list[tuple[str, MessageStatus, str | None]] = field(default_factory=list)
    events: list[EventRecord] = field(default_factory=list)
    cursors: dict[tuple[str, str], str] = field(default_factory=dict)
    known: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def ingest(self, msg: InboundMessage) -> IngestResult:
        duplicate = msg.external_id in self.known
        self.known.add(msg.external_id)
        if not duplicate:
            self.ingested.append(msg)
        self.changed.set()
        return IngestResult(len(self.ingested), 1, 1, duplicate)

    async def history(self, channel: str, address: str, limit: int = 100) -> list[TimelineEntry]:
        return []

    async def customer_typing(self, channel: str, address: str) -> None:
        return None

    async def load_cursor(self, channel: str, key: str) -> str | None:
        return self.cursors.get((channel, key))

    async def save_cursor(self, channel: str, key: str, value: str) -> None:
        self.cursors[(channel, key)] = value
        self.changed.set()

    async def delivery_update(
        self, channel: str, external_id: str, status: MessageStatus, reason: str | None = None
    ) -> int | None:
        self.updates.append((external_id, status, reason))
        return 1

    async def refused(
        self, channel: str, external_id: str | None, reason: str, *, sender: str | None = None
    ) -> None:
        if external_id:
            self.known.add(external_id)
        self.refusals.append((external_id, reason, sender))
        self.changed.set()

    async def known_ids(self, channel: str, external_ids: Collection[str]) -> set[str]:
        return self.known & set(external_ids)

    async def record(self, events: list[EventRecord]) -> None:
        self.events.extend(events)
        self.changed.set()

    async def wait_for(self, count: int, within: float = 10.0) -> None:
        """Until ``count`` messages were ingested or refused."""
        await self.until(lambda: len(self.ingested) + len(self.refusals) >= count, within)

    async def until(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self.changed.clear()
                await self.changed.wait()


def settings(
    smtp: SmtpServer | None = None, imap: ImapServer | None = None, **overrides: Any
) -> dict[str, Any]:
    values: dict[str, Any] = {
        "token_secret": SECRET,
        "address": "support@example.com",
        "display_name": "Example Support",
        "smtp": {"host": "127.0.0.1", "port": 2525, "security": "none", "timeout": 5.0},
    }
    if smtp is not None:
        values["smtp"] = {"host": smtp.host, "port": smtp.port, "security": "none", "timeout": 5.0}
    if imap is not None:
        values["mailboxes"] = [
            {
                "host": imap.host,
                "port": imap.port,
                "user": imap.user,
                "password": imap.password,
                "tls": False,
                "timeout": 5.0,
            }
        ]
    return values | overrides


@asynccontextmanager
async def started(channel: EmailChannel, host: RecordingHost) -> AsyncIterator[EmailChannel]:
    await channel.start(host)
    try:
        yield channel
    finally:
        await channel.stop()


def outbound(message_id: int = 41, conversation_id: int = 77, **overrides: Any) -> OutboundMessage:
    values: dict[str, Any] = {
        "message_id": message_id,
        "conversation_id": conversation_id,
        "channel": "support-mail",
        "recipient": "customer@example.net",
        "text": "Thanks, fixed.",
        "author_name": "Alice",
        "thread": ThreadHints(
            subject="Printer on fire",
            in_reply_to="newest@example.net",
            references=("root@example.net", "newest@example.net"),
            reply_tag="c77",
        ),
    }
    return OutboundMessage(**(values | overrides))


async def folder_messages(server: ImapServer, folder: str) -> list[tuple[str, bytes]]:
    """(FETCH line with FLAGS, raw message) of every message in ``folder``."""
    async with server.session() as client:
        await client.select(folder)
        response = await client.uid("fetch", "1:*", "(FLAGS BODY.PEEK[])")
    found: list[tuple[str, bytes]] = []
    line = ""
    for item in response.lines:
        if isinstance(item, bytearray):
            found.append((line, bytes(item)))
        else:
            line = bytes(item).decode("utf-8", "replace")
    return found


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"address": None}, "address is required"),
        ({"address": "not an address"}, "address"),
        ({"smtp": None}, "smtp is required"),
        ({"smtp": {"host": "127.0.0.1", "security": "ssl"}}, "smtp security"),
        ({"smtp": {"host": "mail.example.com", "security": "none"}}, "loopback"),
        ({"smtp": {"host": "h", "pasword": "x"}}, "smtp.pasword"),
        ({"smtp": {"port": 25}}, "smtp.host is required"),
        ({"mailboxes": {"host": "h"}}, "array of tables"),
        ({"mailboxes": [{"host": "h", "user": "u"}]}, r"mailboxes\[1\].password"),
        ({"mailboxes": [{"host": "h", "user": "u", "password": "p", "after_commit": "x"}]}, "after_commit"),
        ({"mailboxes": [{"host": "h", "user": "u", "password": "p", "port": "993"}]}, r"\[1\].port"),
        ({"mailboxes": [{"host": "h", "user": "u", "password": "p", "tls": "yes"}]}, r"\[1\].tls"),
        ({"sent_folder": "Sent"}, "sent_folder needs a mailbox"),
        ({"audit_seconds": -1}, "audit_seconds"),
        ({"max_attachment_bytes": 0}, "max_attachment_bytes"),
        ({"message_id_domain": "a@b"}, "message_id_domain"),
        ({"adress": "x@example.com"}, "unknown key 'adress'"),
    ],
)
def test_bad_settings_name_the_key(change: dict[str, Any], error: str) -> None:
    values = {k: v for k, v in (settings() | change).items() if v is not None}
    with pytest.raises(ValueError, match=error):
        EmailChannel("support-mail", values)


def test_defaults() -> None:
    box = {"host": "imap.example.com", "user": "u", "password": "pw-9f3e"}
    channel = EmailChannel("support-mail", settings(mailboxes=[box, box | {"folder": "Spam"}]))
    assert channel.domain == "example.com"
    assert channel.max_attachment_bytes == 25 * 1024 * 1024
    assert channel.audit_seconds == 3600
    assert [b.port for b in channel.mailboxes] == [993, 993]
    assert all(b.tls and b.ssl_context is not None for b in channel.mailboxes)
    assert channel.keys == ["u@imap.example.com:993/INBOX", "u@imap.example.com:993/Spam"]
    assert "pw-9f3e" not in repr(channel.mailboxes[0])


def test_config_file_reads_nested_secrets_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        """
[[channels]]
kind = "email"
name = "support-mail"
address = "support@example.com"
[channels.smtp]
host = "127.0.0.1"
security = "none"
password_env = "HUB_SMTP_PASSWORD"
[[channels.mailboxes]]
host = "imap.example.com"
user = "support"
password_env = "HUB_IMAP_PASSWORD"
""",
        encoding="utf-8",
    )
    cfg = load_config(path, {"HUB_SMTP_PASSWORD": "smtp-pw", "HUB_IMAP_PASSWORD": "imap-pw"})
    (spec,) = cfg.channels
    assert spec.settings["smtp"]["password"] == "smtp-pw"
    assert spec.settings["mailboxes"][0]["password"] == "imap-pw"
    channel = EmailChannel(spec.name, {"token_secret": SECRET, **spec.settings})
    assert channel.mailboxes[0].password == "imap-pw"
    assert channel.smtp.password == "smtp-pw"


# -- outbound ------------------------------------------------------------------------------------


async def test_send_composes_thread_headers_with_a_stable_message_id(smtp_server: SmtpServer) -> None:
    channel = EmailChannel("support-mail", settings(smtp_server))
    first = await channel.send(outbound())
    again = await channel.send(outbound())
    other = channel.outbound_id(outbound(message_id=42))
    assert first.external_id == again.external_id == channel.outbound_id(outbound())
    assert first.external_id is not None and first.external_id.startswith("m41.c77.")
    assert first.external_id.endswith("@example.com") and other.startswith("m42.c77.")
    assert EmailChannel("support-mail", settings(token_secret=b"other")).outbound_id(outbound()) != (
        first.external_id
    )

    sent = [d.message() for d in smtp_server.inbox.deliveries]
    assert len(sent) == 2
    assert sent[0]["Message-ID"] == sent[1]["Message-ID"] == f"<{first.external_id}>"
    msg = sent[0]
    assert msg["From"] == "Alice via Example Support <support@example.com>"
    assert msg["Reply-To"].addresses[0].addr_spec == "support+c77@example.com"
    assert msg["To"] == "customer@example.net"
    assert msg["Subject"] == "Re: Printer on fire"
    assert msg["In-Reply-To"] == "<newest@example.net>"
    assert msg["References"] == "<root@example.net> <newest@example.net>"
    assert smtp_server.inbox.deliveries[0].rcpt_tos == ["customer@example.net"]


async def test_smtp_refusal_is_permanent(smtp_server: SmtpServer) -> None:
    smtp_server.inbox.data_reply = "554 5.7.1 Message rejected as spam"
    channel = EmailChannel("support-mail", settings(smtp_server))
    with pytest.raises(PermanentError, match="rejected as spam"):
        await channel.send(outbound())


async def test_sent_copy_lands_in_the_folder_marked_seen(
    imap_server: ImapServer, smtp_server: SmtpServer
) -> None:
    await imap_server.create_mailbox("Sent")
    channel = EmailChannel("support-mail", settings(smtp_server, imap_server, sent_folder="Sent"))
    result = await channel.send(outbound())
    (line, raw), *rest = await folder_messages(imap_server, "Sent")
    assert rest == []
    assert "\\Seen" in line
    assert raw_external_id(raw) == result.external_id
    # The mailbox itself is untouched: the copy is not fed back in as customer mail.
    assert await imap_server.uids() == []


async def test_failed_sent_copy_never_fails_the_send(
    pymap: ImapServer, smtp_server: SmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    channel = EmailChannel("support-mail", settings(smtp_server, pymap, sent_folder="No such folder"))
    result = await channel.send(outbound())
    assert result.external_id is not None
    assert len(smtp_server.inbox.deliveries) == 1
    assert "No such folder failed" in caplog.text


# -- inbound -------------------------------------------------------------------------------------


async def test_appended_mail_reaches_ingest_strictly_threaded(imap_server: ImapServer) -> None:
    host = RecordingHost()
    channel = EmailChannel("support-mail", settings(imap=imap_server))
    uids = await imap_server.append_many([mail(1)])
    async with started(channel, host):
        await host.wait_for(1)
        await imap_server.append(mail(2))  # pushed while idling
        await host.wait_for(2)
    first, second = host.ingested
    assert [first.external_id, second.external_id] == ["ch-1@example.net", "ch-2@example.net"]
    assert first.channel == "support-mail" and first.channel_kind == "email"
    assert first.sender == "customer1@example.net"
    assert first.thread.strict and first.thread.reply_tag == "c77" and first.thread.subject == "Question 1"
    assert not first.automated
    assert first.full_text is not None and "quoted old text" in first.full_text
    assert "quoted old text" not in first.text
    validity = await imap_server.uidvalidity()
    key = channel.keys[0]
    assert host.cursors[("support-mail", key)] == f"{validity}:{uids[0] + 1}"


async def test_refused_mail_is_recorded_and_does_not_block_the_next(imap_server: ImapServer) -> None:
    host = RecordingHost()
    channel = EmailChannel("support-mail", settings(imap=imap_server, max_attachment_bytes=1000))
    no_from = crlf((FIXTURES / "no_from.eml").read_bytes())
    await imap_server.append_many([no_from, mail(1, attachment=b"x" * 5000), mail(2)])
    async with started(channel, host):
        await host.wait_for(3)
    assert [m.external_id for m in host.ingested] == ["ch-2@example.net"]
    (first_id, first_reason, first_sender), (big_id, big_reason, big_sender) = host.refusals
    assert first_id == "no-from-1@example.net" and "From" in first_reason and first_sender is None
    assert big_id == "ch-1@example.net" and "big.bin" in big_reason
    assert big_sender == "customer1@example.net"


async def test_bounce_marks_the_reply_failed_and_joins_its_conversation(pymap: ImapServer) -> None:
    host = RecordingHost()
    channel = EmailChannel("support-mail", settings(imap=pymap))
    await pymap.append(crlf((FIXTURES / "dsn_bounce.eml").read_bytes()))
    async with started(channel, host):
        await host.wait_for(1)
    assert host.updates == [
        (
            "hub-out-91@example.com",
            MessageStatus.FAILED,
            "550 5.1.1 <nobody@customer.example>: Recipient address rejected: User unknown",
        )
    ]
    (bounce,) = host.ingested
    assert bounce.automated
    assert bounce.thread.in_reply_to == "hub-out-91@example.com" and bounce.thread.strict


async def test_two_mailboxes_feed_one_channel(dovecot: DovecotServer) -> None:
    """The same message in INBOX and another folder (one over implicit TLS) is one entry."""
    await dovecot.create_mailbox("Other")
    await dovecot.append(mail(1))
    await dovecot.append(mail(1), mailbox="Other")
    host = RecordingHost()
    values = settings(imap=dovecot)
    values["mailboxes"].append(
        {
            "host": dovecot.host,
            "port": dovecot.tls_port,
            "user": dovecot.user,
            "password": dovecot.password,
            "folder": "Other",
            "tls": True,
            "ca_file": str(dovecot.directory / "cert.pem"),
            "timeout": 5.0,
        }
    )
    channel = EmailChannel("support-mail", values)
    async with started(channel, host):
        await host.until(lambda: len(host.cursors) == 2)
    assert [m.external_id for m in host.ingested] == ["ch-1@example.net"]


# -- the count audit -----------------------------------------------------------------------------


async def test_audit_reports_a_missing_message_then_none(imap_server: ImapServer) -> None:
    host = RecordingHost()
    channel = EmailChannel("support-mail", settings(imap=imap_server, audit_seconds=0))
    no_id = crlf((FIXTURES / "no_message_id.eml").read_bytes())
    uids = await imap_server.append_many([mail(1), no_id, mail(3)])
    async with started(channel, host):
        await host.wait_for(3)
        assert any(m.external_id.startswith("sha256:") for m in host.ingested)
        # The audit looks up to the cursor, saved once the batch is committed.
        await host.until(lambda: any(v.endswith(f":{uids[2]}") for v in host.cursors.values()), 5)
        await channel.audit()  # all known
        host.known.discard("ch-3@example.net")  # as if the hub lost it
        (report,) = await channel.audit()
        assert report == {
            "mailbox": channel.keys[0],
            "checked": 3,
            "missing": 1,
            "missing_uids": [uids[2]],
        }
        assert ("hub_email_audit_missing", {"channel": "support-mail", "mailbox": channel.keys[0]}, 1.0) in (
            channel.metrics()
        )
        host.known.add("ch-3@example.net")
        (report,) = await channel.audit()
        assert report["missing"] == 0 and report["checked"] == 3
    audits = [e for e in host.events if e.type == EventType.CHANNEL_AUDIT]
    assert [(e.data["checked"], e.data["missing"]) for e in audits] == [(3, 0), (3, 1), (3, 0)]
    assert audits[1].data["channel"] == "support-mail"
    assert audits[1].data["missing_uids"] == [uids[2]]
    assert ("hub_email_audit_checked", {"channel": "support-mail", "mailbox": channel.keys[0]}, 3.0) in (
        channel.metrics()
    )


async def test_periodic_audit_runs_on_its_own(pymap: ImapServer) -> None:
    host = RecordingHost()
    channel = EmailChannel("support-mail", settings(imap=pymap, audit_seconds=0.2))
    await pymap.append(mail(1))
    async with started(channel, host):
        await host.wait_for(1)
        await host.until(lambda: any(e.data.get("checked") == 1 for e in host.events), 5)
    assert all(e.data["missing"] == 0 for e in host.events)
