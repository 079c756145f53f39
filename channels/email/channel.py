"""The email channel kind: every configured IMAP mailbox in, one SMTP server out.

Inbound, each mailbox runs an :class:`~channels.email.receive.ImapReceiver` under this one channel
name, so the same message in two mailboxes is one entry (ingest's key is the channel and the
Message-ID). A message that can never be stored is recorded with ``host.refused`` and passed, so one
bad message never blocks the mailbox. A failed delivery report (RFC 3464) marks our outbound message
failed and joins its conversation.

Outbound, the Message-ID is derived from the hub's message id (:meth:`EmailChannel.outbound_id`):
every retry sends the same id, and a bounce or a reply finds the message by it. Reply-To is the
conversation's plus-address, so replies thread even when a client drops In-Reply-To.

The count audit compares, per mailbox, every message up to the cursor with what the hub holds and
records a ``channel.audit`` event, so a lost message is noticed rather than assumed away.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import re
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any, ClassVar

import aioimaplib

from channels.base import BaseChannel, register_channel
from channels.email.compose import POLICY, compose, mailbox, reply_address
from channels.email.decode import addresses, message_ids, raw_values
from channels.email.mbox import read_mbox
from channels.email.parse import inbound_from, parse_email, raw_external_id
from channels.email.receive import (
    Cursor,
    ImapReceiver,
    ImapSettings,
    mailbox_arg,
    parse_uid_fetch,
    parse_uid_search,
)
from channels.email.send import SmtpSender, SmtpSettings
from hub.errors import IngestRefused
from hub.model import (
    EventType,
    MessageStatus,
    OutboundMessage,
    SendResult,
    new_event,
)
from hub.types import Archive, ChannelHost

log = logging.getLogger(__name__)

DEFAULT_MAX_ATTACHMENT_BYTES = 25 * 1024 * 1024
# UIDs whose Message-ID the audit fetches per command, and ids per known_ids question.
AUDIT_BATCH = 500
# At most this many missing UIDs are named in one audit event (the count is always whole).
AUDIT_MAX_UIDS = 100

_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")
_TOP_KEYS = {
    "address",
    "display_name",
    "message_id_domain",
    "max_attachment_bytes",
    "smtp",
    "mailboxes",
    "sent_folder",
    "audit_seconds",
    "token_secret",
}
_SMTP_KEYS = {"host", "port", "security", "username", "password", "timeout", "verify", "ca_file"}
_MAILBOX_KEYS = {
    "host",
    "port",
    "user",
    "password",
    "folder",
    "tls",
    "verify",
    "ca_file",
    "after_commit",
    "batch",
    "idle_seconds",
    "poll_seconds",
    "timeout",
}


# -- ids of raw messages -------------------------------------------------------------------------------


def header_message_id(header: bytes) -> str | None:
    """The first Message-ID of a header block, brackets stripped, as parsing stores it; None without one."""
    msg = BytesParser(policy=policy.default).parsebytes(header, headersonly=True)
    values = raw_values(msg, "Message-ID")
    ids = message_ids(values[0]) if values else []
    return ids[0] if ids else None


def raw_sender(raw: bytes) -> str | None:
    """The From address of a raw message, when it has a readable one (for the refusal record)."""
    try:
        msg = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
        found = addresses(msg, "From")
    except Exception:
        return None
    return found[0][1] if found else None


# -- settings ------------------------------------------------------------------------------------------


def _table(value: Any, key: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"{key} must be a table")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ValueError(f"unknown key {key}.{unknown[0]} (known: {', '.join(sorted(allowed))})")
    return dict(value)


def _str(table: Mapping[str, Any], name: str, key: str, default: str | None = None) -> str:
    value = table.get(name, default)
    if value is None:
        raise ValueError(f"{key}{name} is required")
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{key}{name} must be a non-empty string")
    return value


def _opt_str(table: Mapping[str, Any], name: str, key: str) -> str | None:
    return _str(table, name, key) if table.get(name) is not None else None


def _number(table: Mapping[str, Any], name: str, key: str, default: float, *, minimum: float) -> float:
    value = table.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < minimum:
        raise ValueError(f"{key}{name} must be a number of at least {minimum:g}, not {value!r}")
    return float(value)


def _int(table: Mapping[str, Any], name: str, key: str, default: int | None, *, minimum: int) -> int:
    value = table.get(name, default)
    if value is None:
        raise ValueError(f"{key}{name} is required")
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key}{name} must be a whole number of at least {minimum}, not {value!r}")
    return value


def _bool(table: Mapping[str, Any], name: str, key: str, default: bool) -> bool:
    value = table.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key}{name} must be true or false, not {value!r}")
    return value


def smtp_settings(value: Any) -> SmtpSettings:
    """``[channels.smtp]`` as :class:`SmtpSettings`; ValueError naming the bad key."""
    table = _table(value, "smtp", _SMTP_KEYS)
    key = "smtp."
    port = _int(table, "port", key, None, minimum=1) if "port" in table else None
    try:
        return SmtpSettings(
            host=_str(table, "host", key),
            port=port,
            security=_str(table, "security", key, "starttls"),  # type: ignore[arg-type]
            username=_opt_str(table, "username", key),
            password=_opt_str(table, "password", key),
            timeout=_number(table, "timeout", key, 30.0, minimum=0.001),
            verify=_bool(table, "verify", key, True),
            ca_file=_opt_str(table, "ca_file", key),
        )
    except ValueError as exc:
        raise ValueError(str(exc) if str(exc).startswith("smtp") else f"smtp: {exc}") from None


def _client_context(tls: bool, verify: bool, ca_file: str | None) -> ssl.SSLContext | None:
    if not tls:
        return None
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def imap_settings(value: Any, index: int) -> ImapSettings:
    """One ``[[channels.mailboxes]]`` entry as :class:`ImapSettings`; ValueError naming the bad key."""
    key = f"mailboxes[{index + 1}]."
    table = _table(value, key.rstrip("."), _MAILBOX_KEYS)
    tls = _bool(table, "tls", key, True)
    if "password" not in table:
        raise ValueError(f"{key}password is required (password_env names an unset variable?)")
    try:
        return ImapSettings(
            host=_str(table, "host", key),
            port=_int(table, "port", key, 993 if tls else 143, minimum=1),
            user=_str(table, "user", key),
            password=_str(table, "password", key),
            folder=_str(table, "folder", key, "INBOX"),
            tls=tls,
            ssl_context=_client_context(
                tls, _bool(table, "verify", key, True), _opt_str(table, "ca_file", key)
            ),
            after_commit=_str(table, "after_commit", key, "none"),
            batch=_int(table, "batch", key, 200, minimum=1),
            idle_seconds=_number(table, "idle_seconds", key, 25 * 60, minimum=0.001),
            poll_seconds=_number(table, "poll_seconds", key, 30.0, minimum=0.001),
            timeout=_number(table, "timeout", key, 30.0, minimum=0.001),
        )
    except ValueError as exc:
        if str(exc).startswith(key):
            raise
        # ImapSettings' own checks name the field but not the entry.
        raise ValueError(f"{key}{exc}") from None


@dataclass(slots=True)
class AuditResult:
    """One mailbox's last count audit, for the event record and the metrics."""

    mailbox: str
    checked: int
    missing: int
    missing_uids: list[int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "mailbox": self.mailbox,
            "checked": self.checked,
            "missing": self.missing,
            "missing_uids": self.missing_uids,
        }


class _HostCursors:
    """The receivers' cursors, kept by the hub per (channel, mailbox key)."""

    def __init__(self, host: ChannelHost, channel: str) -> None:
        self.host = host
        self.channel = channel

    async def load(self, key: str) -> str | None:
        return await self.host.load_cursor(self.channel, key)

    async def save(self, key: str, value: str) -> None:
        await self.host.save_cursor(self.channel, key, value)


# -- the channel ---------------------------------------------------------------------------------------


@register_channel
class EmailChannel(BaseChannel):
    kind: ClassVar[str] = "email"
    sends_attachments: ClassVar[bool] = True
    metric_help: ClassVar[dict[str, str]] = {
        "hub_email_audit_missing": "Messages on the IMAP server that the hub lacked at the last audit.",
        "hub_email_audit_checked": "Messages the mailbox's last count audit compared.",
    }
    # Seconds a stopping mailbox may take to finish the message it is delivering.
    stop_grace: ClassVar[float] = 10.0

    def __init__(self, name: str, settings: Mapping[str, Any], *, data_dir: Any = None) -> None:
        super().__init__(name, settings, data_dir=data_dir)
        s = self.settings
        for unknown in sorted(set(s) - _TOP_KEYS):
            raise ValueError(f"unknown key {unknown!r} (see config/hub.example.toml)")
        address = _str(s, "address", "")
        try:
            self.address = mailbox(address).addr_spec
        except ValueError as exc:
            raise ValueError(f"address: {exc}") from None
        self.display_name = _opt_str(s, "display_name", "")
        self.domain = _str(s, "message_id_domain", "", self.address.rpartition("@")[2]).lower()
        if "@" in self.domain or any(c.isspace() or c in "<>" for c in self.domain):
            raise ValueError(f"message_id_domain is not a domain: {self.domain!r}")
        self.max_attachment_bytes = _int(
            s, "max_attachment_bytes", "", DEFAULT_MAX_ATTACHMENT_BYTES, minimum=1
        )
        if "smtp" not in s:
            raise ValueError("smtp is required: the [channels.smtp] table of the outgoing server")
        self.smtp = smtp_settings(s["smtp"])
        boxes = s.get("mailboxes", [])
        if not isinstance(boxes, list):
            raise ValueError("mailboxes must be an array of tables: [[channels.mailboxes]]")
        self.mailboxes = [imap_settings(box, i) for i, box in enumerate(boxes)]
        # Each mailbox's cursor key and name in logs and metrics (no password).
        self.keys = [f"{b.user}@{b.host}:{b.port}/{b.folder}" for b in self.mailboxes]
        if len(set(self.keys)) < len(self.keys):
            raise ValueError("mailboxes: the same mailbox folder is listed twice")
        self.sent_folder = _opt_str(s, "sent_folder", "")
        if self.sent_folder and not self.mailboxes:
            raise ValueError("sent_folder needs a mailbox: add a [[channels.mailboxes]] entry")
        self.audit_seconds = _number(s, "audit_seconds", "", 3600.0, minimum=0)
        secret = s.get("token_secret")
        if isinstance(secret, str):
            secret = secret.encode()
        if not isinstance(secret, bytes) or not secret:
            raise ValueError("token_secret is required (the hub supplies it)")
        self._secret = secret
        self.sender = SmtpSender(self.smtp)
        self.receivers: list[ImapReceiver] = []
        # Mailbox key -> its last count audit (for metrics()).
        self.last_audit: dict[str, AuditResult] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self, host: ChannelHost) -> None:
        """Start every mailbox; each delivers through :meth:`deliver` and keeps its cursor in the hub."""
        await super().start(host)
        cursors = _HostCursors(host, self.name)
        self.receivers = [
            ImapReceiver(box, cursors, self.deliver, key=key)
            for box, key in zip(self.mailboxes, self.keys, strict=True)
        ]
        for receiver in self.receivers:
            await receiver.start()
        if self.audit_seconds > 0:
            loop = asyncio.get_running_loop()
            for box, key in zip(self.mailboxes, self.keys, strict=True):
                task = loop.create_task(self._audit_loop(box, key), name=f"{self.name}:audit")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Stop the mailboxes (each finishes its message in flight) and the audits."""
        receivers, self.receivers = self.receivers, []
        await asyncio.gather(*(r.stop(self.stop_grace) for r in receivers))
        await super().stop()

    def _host(self) -> ChannelHost:
        if self.host is None:
            raise RuntimeError(f"channel {self.name} is not started")
        return self.host

    # -- inbound -------------------------------------------------------------------------------

    async def deliver(self, uid: int, raw: bytes) -> None:
        """One message from a mailbox: parse, report a bounce, ingest. Returns once it is committed
        or recorded as refused; any other failure propagates and the mailbox retries it."""
        host = self._host()
        try:
            parsed = parse_email(raw, channel=self.name, max_attachment_bytes=self.max_attachment_bytes)
            msg = inbound_from(parsed)
            bounce = parsed.bounce
            if bounce is not None and bounce.failed and bounce.original_message_id:
                await host.delivery_update(
                    self.name, bounce.original_message_id, MessageStatus.FAILED, bounce.reason
                )
                msg = dataclasses.replace(
                    msg, thread=dataclasses.replace(msg.thread, in_reply_to=bounce.original_message_id)
                )
            await host.ingest(msg)
        except IngestRefused as exc:
            external_id = raw_external_id(raw)
            log.warning("%s: UID %d (%s) refused: %s", self.name, uid, external_id, exc)
            await host.refused(self.name, external_id, str(exc), sender=raw_sender(raw))

    # -- outbound ------------------------------------------------------------------------------

    def outbound_id(self, msg: OutboundMessage) -> str:
        """The reply's Message-ID without brackets (as inbound ids are stored, so a bounce or an
        In-Reply-To finds it): fixed by the hub's message id, unguessable without the secret."""
        mac = hmac.new(self._secret, str(msg.message_id).encode(), hashlib.sha256).hexdigest()[:10]
        return f"m{msg.message_id}.c{msg.conversation_id}.{mac}@{self.domain}"

    async def send(self, msg: OutboundMessage) -> SendResult:
        """Compose the reply with its thread headers and send it; a copy goes to ``sent_folder``."""
        message_id = self.outbound_id(msg)
        message = compose(
            msg,
            from_address=self.address,
            from_name=self.display_name,
            reply_to=reply_address(self.address, msg.conversation_id),
            message_id=f"<{message_id}>",
            in_reply_to=msg.thread.in_reply_to,
            references=list(msg.thread.references),
        )
        await self.sender.send(message)
        if self.sent_folder:
            await self._keep_sent(message.as_bytes(policy=POLICY), message_id)
        return SendResult(external_id=message_id)

    async def _keep_sent(self, raw: bytes, message_id: str) -> None:
        """APPEND the sent message to ``sent_folder`` as read; a failure is logged, never raised:
        the customer has the message already."""
        assert self.sent_folder is not None
        box = self.mailboxes[0]
        try:
            async with asyncio.timeout(box.timeout * 2), _imap(box) as client:
                response = await client.append(raw, mailbox=mailbox_arg(self.sent_folder), flags=r"(\Seen)")
                if response.result != "OK":
                    raise aioimaplib.Error(_text(response))
        except Exception as exc:
            log.warning("%s: copy of %s to %s failed: %s", self.name, message_id, self.sent_folder, exc)

    # -- the count audit -----------------------------------------------------------------------

    async def audit(self) -> list[dict[str, Any]]:
        """Run the count audit of every mailbox now; one result (as recorded) per mailbox."""
        results = []
        for box, key in zip(self.mailboxes, self.keys, strict=True):
            results.append((await self._audit_mailbox(box, key)).as_dict())
        return results

    async def _audit_loop(self, box: ImapSettings, key: str) -> None:
        while True:
            await asyncio.sleep(self.audit_seconds)
            try:
                await self._audit_mailbox(box, key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("%s: audit of mailbox %s failed: %s", self.name, key, exc)

    async def _audit_mailbox(self, box: ImapSettings, key: str) -> AuditResult:
        """Every message up to the cursor (committed or refused) must be known to the hub."""
        host = self._host()
        cursor = Cursor.parse(await host.load_cursor(self.name, key))
        missing: list[int] = []
        checked = 0
        async with _imap(box) as client:
            # SELECT, not EXAMINE: aioimaplib allows UID commands only in the SELECTED state. Nothing
            # is changed: the fetches PEEK.
            response = await client.select(mailbox_arg(box.folder))
            if response.result != "OK":
                raise aioimaplib.Error(f"SELECT {box.folder} refused: {_text(response)}")
            validity = _uidvalidity(response)
            # No cursor, or one of an older numbering (the receiver is resyncing): nothing to check yet.
            if cursor is not None and cursor.uidvalidity == validity and cursor.uid > 0:
                response = await client.uid_search(f"UID 1:{cursor.uid}", charset=None)
                if response.result != "OK":
                    raise aioimaplib.Error(f"UID SEARCH refused: {_text(response)}")
                uids = [u for u in parse_uid_search(response.lines) if u <= cursor.uid]
                for start in range(0, len(uids), AUDIT_BATCH):
                    chunk = uids[start : start + AUDIT_BATCH]
                    ids = await _external_ids(client, chunk)
                    known = await host.known_ids(self.name, set(ids.values()))
                    missing.extend(uid for uid, ext in ids.items() if ext not in known)
                    checked += len(ids)
        result = AuditResult(key, checked, len(missing), sorted(missing)[:AUDIT_MAX_UIDS])
        self.last_audit[key] = result
        if missing:
            log.warning(
                "%s: audit of mailbox %s: %d of %d messages are not in the hub (UIDs %s)",
                self.name,
                key,
                len(missing),
                checked,
                result.missing_uids[:10],
            )
        await host.record([new_event(EventType.CHANNEL_AUDIT, channel=self.name, **result.as_dict())])
        return result

    def archive(self, path: Path, fmt: str) -> Archive:
        """An mbox file read as this channel would have received its messages (``hub import mbox``)."""
        if fmt != "mbox":
            return super().archive(path, fmt)
        return read_mbox(path, self.name, self.max_attachment_bytes)

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """The last audit of each mailbox as Prometheus samples (name, labels, value)."""
        samples: list[tuple[str, dict[str, str], float]] = []
        for key, result in self.last_audit.items():
            labels = {"channel": self.name, "mailbox": key}
            samples.append(("hub_email_audit_missing", labels, float(result.missing)))
            samples.append(("hub_email_audit_checked", dict(labels), float(result.checked)))
        return samples


async def _external_ids(client: aioimaplib.IMAP4, uids: list[int]) -> dict[int, str]:
    """UID -> channel id for ``uids`` (contiguous or not): the Message-ID header, else the hash of
    the whole message, which is fetched only for those without one."""
    wanted = set(uids)
    response = await client.uid("fetch", _uid_set(uids), "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    if response.result != "OK":
        raise aioimaplib.Error(f"UID FETCH refused: {_text(response)}")
    ids: dict[int, str] = {}
    without: list[int] = []
    for uid, header in parse_uid_fetch(response.lines).items():
        if uid not in wanted:
            continue
        found = header_message_id(header)
        if found:
            ids[uid] = found
        else:
            without.append(uid)
    for uid in sorted(without):
        response = await client.uid("fetch", str(uid), "(UID BODY.PEEK[])")
        if response.result != "OK":
            raise aioimaplib.Error(f"UID FETCH refused: {_text(response)}")
        raw = parse_uid_fetch(response.lines).get(uid)
        if raw is not None:
            ids[uid] = raw_external_id(raw)
    return ids


def _uid_set(uids: list[int]) -> str:
    """``1:3,7,9:10``: a compact IMAP sequence set of sorted UIDs."""
    ranges: list[str] = []
    start = prev = uids[0]
    for uid in [*uids[1:], None]:
        if uid is not None and uid == prev + 1:
            prev = uid
            continue
        ranges.append(str(start) if start == prev else f"{start}:{prev}")
        if uid is not None:
            start = prev = uid
    return ",".join(ranges)


def _uidvalidity(response: Any) -> int | None:
    found = _UIDVALIDITY.search(b" ".join(bytes(line) for line in response.lines))
    return int(found.group(1)) if found else None


def _text(response: Any) -> str:
    return " ".join(bytes(line).decode("utf-8", "replace") for line in response.lines)[:300]


@contextlib.asynccontextmanager
async def _imap(box: ImapSettings) -> AsyncIterator[aioimaplib.IMAP4]:
    """A logged-in connection of its own (the receiver's stays in IDLE); logged out and closed after."""
    client: aioimaplib.IMAP4
    if box.tls:
        client = aioimaplib.IMAP4_SSL(box.host, box.port, timeout=box.timeout, ssl_context=box.ssl_context)
    else:
        client = aioimaplib.IMAP4(box.host, box.port, timeout=box.timeout)
    try:
        await client.wait_hello_from_server()
        response = await client.login(box.user, box.password)
        if response.result != "OK":
            raise aioimaplib.Error(f"LOGIN refused: {_text(response)}")
        yield client
        with contextlib.suppress(aioimaplib.AioImapException, OSError, TimeoutError):
            await asyncio.wait_for(client.logout(), 5)
    finally:
        for pending in list(client.tasks) + list(client.protocol.tasks):
            pending.cancel()
        transport = client.protocol.transport
        if transport is not None and not transport.is_closing():
            transport.close()
