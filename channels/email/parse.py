"""Inbound email: raw RFC 5322 bytes -> :class:`ParsedEmail` (an InboundMessage plus what only email
knows: the full original text, whether it is an auto-reply, and the bounce it reports).

Pure functions over bytes, built on the standard library's ``email`` package (``policy.default``) for
the MIME structure (RFC 2045-2049, RFC 2231 parameters) and on ``channels.email.decode`` for header
text. Every input either parses or raises :class:`IngestRefused` with a reason a person understands.

Choices, each a contract the tests hold:

- An attachment over ``max_attachment_bytes`` refuses the whole message, naming the file and its size:
  a message stored without its file would look complete and be wrong.
- A forwarded message (``message/rfc822``) is kept whole as an attachment "<its subject>.eml"; its text
  is not merged into the timeline text. ``text/calendar`` is kept as an attachment (``invite.ics``).
- A multipart whose declared boundary never occurs is re-read with the boundary its body actually uses.
- ``received_at`` defaults to the Date header (so an mbox import keeps history in order), else now.
- A message whose subject marks a forward (Fwd:, FW:) keeps its whole text in the timeline.
"""

from __future__ import annotations

import dataclasses
import hashlib
import mimetypes
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import parsedate_to_datetime

import nh3

from channels.email.bounces import Bounce, parse_bounce
from channels.email.decode import (
    addresses,
    children,
    clean_text,
    decode_bytes,
    header_text,
    message_ids,
    raw_values,
)
from channels.email.quotes import collapse_quotes, html_to_text
from hub.errors import IngestRefused
from hub.model import Attachment, IdentityKind, InboundMessage, ThreadHints, utcnow

# Formatting and links only; no script, style, forms, frames or event handlers (nh3 drops on* always).
SAFE_TAGS = {
    "a", "b", "blockquote", "br", "code", "div", "em", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i",
    "img", "li", "ol", "p", "pre", "s", "span", "strong", "sub", "sup", "table", "tbody", "td", "tfoot",
    "th", "thead", "tr", "u", "ul",
}  # fmt: skip
SAFE_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "width", "height"}, "td": {"colspan"}}
# cid: stays so that the inbox can point inline images at their stored attachment.
SAFE_URL_SCHEMES = {"http", "https", "mailto", "cid"}

MAX_REFERENCES = 100  # the first (thread root) and the newest 99 are kept
_AUTO_SUBJECT = re.compile(
    r"^\s*(out of (the )?office|automatic reply|auto[- ]?reply|autoreply|abwesenheitsnotiz"
    r"|réponse automatique|respuesta automática)\b",
    re.IGNORECASE,
)
_FORWARD_SUBJECT = re.compile(r"^\s*(fwd?|wg|tr)\s*:", re.IGNORECASE)
_REPLY_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=-]{0,63}$")
_UNSAFE_FILENAME = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]+")


@dataclass(frozen=True, slots=True)
class ParsedEmail:
    """One parsed message.

    ``message.text`` is the new part for the timeline; ``full_text`` the whole original text.
    ``inline_images`` maps a Content-ID (as ``cid:`` URLs in the HTML name it) to the index of its
    attachment in ``message.attachments``: ``hub.model.Attachment`` has no content id of its own.
    """

    message: InboundMessage
    full_text: str
    auto_reply: bool
    bounce: Bounce | None = None
    inline_images: Mapping[str, int] = field(default_factory=dict)


def parse_email(
    raw: bytes, *, channel: str, max_attachment_bytes: int, received_at: datetime | None = None
) -> ParsedEmail:
    """Parse one message as an IMAP server or an mbox file holds it."""
    try:
        return _parse(raw, channel, max_attachment_bytes, received_at)
    except IngestRefused:
        raise
    except Exception as exc:  # last line of defence: a parser bug must not stop the mailbox
        raise IngestRefused(f"the message could not be parsed ({type(exc).__name__}: {exc})") from exc


def _parse(raw: bytes, channel: str, max_attachment_bytes: int, received_at: datetime | None) -> ParsedEmail:
    msg = BytesParser(policy=policy.default).parsebytes(raw)
    senders = addresses(msg, "From")
    if not senders:
        reason = "has no From header" if not raw_values(msg, "From") else "has no address in its From header"
        raise IngestRefused(f"the message {reason}; there is no one to answer")
    sender_name, sender = senders[0]
    msg = _with_real_boundary(msg)
    body = _Body(max_attachment_bytes)
    body.collect(msg, in_alternative=False)
    html = "\n".join(body.html) if body.html else None
    full_text = "\n\n".join(t for t in body.plain if t.strip()) or (html_to_text(html) if html else "")
    full_text = full_text.replace("\r\n", "\n").strip()
    subject = header_text(msg, "Subject")
    text = full_text if _FORWARD_SUBJECT.match(subject or "") else collapse_quotes(full_text)
    recipients = addresses(msg, "Delivered-To", "To", "Cc")
    message = InboundMessage(
        channel=channel,
        channel_kind="email",
        external_id=_external_id(msg, raw),
        identity_kind=IdentityKind.EMAIL,
        sender=sender,
        sender_name=sender_name or None,
        recipient=recipients[0][1] if recipients else None,
        text=text,
        html=_sanitise(html) if html else None,
        attachments=tuple(body.attachments),
        received_at=received_at or _date(msg) or utcnow(),
        thread=ThreadHints(
            subject=subject,
            in_reply_to=next(iter(message_ids(_first(msg, "In-Reply-To"))), None),
            references=_references(msg),
            reply_tag=reply_tag(address for _, address in recipients),
        ),
    )
    return ParsedEmail(message, full_text, is_auto_reply(msg, subject), parse_bounce(msg), body.inline)


def inbound_from(parsed: ParsedEmail) -> InboundMessage:
    """The message ingest stores for ``parsed``; the live mailbox and ``hub import mbox`` both use it,
    so a message imported from an archive is stored exactly as if it had arrived by IMAP.

    Auto-replies and bounces are ``automated`` (stored, never reopening a conversation); threading is
    ``strict`` (a new subject without In-Reply-To/References is a new matter); ``full_text`` is kept
    when the timeline text shows only the new part.
    """
    msg = parsed.message
    return dataclasses.replace(
        msg,
        automated=parsed.auto_reply or parsed.bounce is not None,
        full_text=parsed.full_text if parsed.full_text != msg.text else None,
        thread=dataclasses.replace(msg.thread, strict=True),
    )


def reply_tag(addresses: Iterable[str]) -> str | None:
    """The first plus-address tag among addresses: ``support+c1234@example.com`` -> ``c1234``.

    Any well-formed tag is returned; threading decides whether it names a conversation.
    """
    for address in addresses:
        local = address.rpartition("@")[0]
        tag = local.partition("+")[2]
        if _REPLY_TAG.match(tag):
            return tag
    return None


def is_auto_reply(msg: Message, subject: str | None) -> bool:
    """RFC 3834 Auto-Submitted, the X-Autoreply family, Precedence bulk/junk/list, out-of-office subjects."""
    submitted = _first(msg, "Auto-Submitted")
    if submitted and submitted.split(";", 1)[0].strip().lower() != "no":
        return True
    if raw_values(msg, "X-Autoreply") or raw_values(msg, "X-Autorespond"):
        return True
    if (_first(msg, "Precedence") or "").strip().lower() in ("bulk", "junk", "list"):
        return True
    return bool(_AUTO_SUBJECT.match(subject or ""))


def _first(msg: Message, name: str) -> str | None:
    values = raw_values(msg, name)
    return values[0] if values else None


def raw_external_id(raw: bytes) -> str:
    """The channel id of a raw message even when it does not parse (a refusal names the same
    message a later successful parse would): its Message-ID, else the ``sha256:`` of its bytes."""
    try:
        headers = BytesParser(policy=policy.default).parsebytes(raw, headersonly=True)
        return _external_id(headers, raw)
    except Exception:  # headers too damaged even to read: the bytes still name the message
        return "sha256:" + hashlib.sha256(raw).hexdigest()


def _external_id(msg: Message, raw: bytes) -> str:
    ids = message_ids(_first(msg, "Message-ID"))
    return ids[0] if ids else "sha256:" + hashlib.sha256(raw).hexdigest()


def _references(msg: Message) -> tuple[str, ...]:
    refs = [i for value in raw_values(msg, "References") for i in message_ids(value)]
    if len(refs) > MAX_REFERENCES:
        refs = refs[:1] + refs[-(MAX_REFERENCES - 1) :]
    return tuple(refs)


def _date(msg: Message) -> datetime | None:
    value = _first(msg, "Date")
    try:
        when = parsedate_to_datetime(value) if value else None
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when is None:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _sanitise(html: str) -> str:
    return nh3.clean(
        html.strip(),
        tags=SAFE_TAGS,
        clean_content_tags={"script", "style", "title", "head"},
        attributes=SAFE_ATTRIBUTES,
        url_schemes=SAFE_URL_SCHEMES,
        link_rel="noopener noreferrer nofollow",
    ).strip()


def _with_real_boundary(msg: EmailMessage) -> EmailMessage:
    """Re-read a multipart whose declared boundary never occurs with the one its body uses."""
    if msg.get_content_maintype() != "multipart" or msg.is_multipart():
        return msg
    payload = decode_bytes(_bytes(msg), "latin-1")
    match = re.search(r"^--([^\s]{1,70})\r?\n(?:[\w-]+:[^\n]*\n)*?content-type:", payload, re.I | re.M)
    if not match:
        return msg
    try:
        msg.set_param("boundary", match.group(1))
        reread = BytesParser(policy=policy.default).parsebytes(msg.as_bytes())
    except Exception:  # damaged headers the generator cannot write back: the body stays text
        return msg
    return reread if reread.is_multipart() else msg


class _Body:
    """Walks the MIME tree once: body text and HTML, attachments, and inline image ids."""

    def __init__(self, max_attachment_bytes: int) -> None:
        self.max_bytes = max_attachment_bytes
        self.plain: list[str] = []
        self.html: list[str] = []
        self.attachments: list[Attachment] = []
        self.inline: dict[str, int] = {}

    def collect(self, part: Message, *, in_alternative: bool) -> None:
        ctype = part.get_content_type()
        if part.get_content_maintype() == "multipart":
            if part.is_multipart():
                for child in children(part):
                    self.collect(child, in_alternative=ctype == "multipart/alternative")
                return
            ctype = "text/plain"  # no boundary found at all: the body is shown as text
        filename = _filename(part)
        is_attachment = filename is not None or part.get_content_disposition() == "attachment"
        if ctype in ("text/plain", "text/html") and not is_attachment:
            text = _text(part)
            (self.plain if ctype == "text/plain" else self.html).append(text)
        elif ctype in ("message/delivery-status", "message/global-delivery-status"):
            return  # its fields are in ParsedEmail.bounce
        elif ctype.startswith("message/"):
            forwarded = "message/rfc822" if ctype == "message/global" else ctype
            self._add(_forwarded_name(part), forwarded, _message_bytes(part), part)
        elif ctype == "text/calendar":
            self._add(filename or "invite.ics", ctype, _bytes(part), part)
        elif in_alternative and not is_attachment:
            return  # another rendering of the same text (text/enriched, text/watch-html)
        else:
            self._add(filename or _default_name(ctype, len(self.attachments) + 1), ctype, _bytes(part), part)

    def _add(self, filename: str, content_type: str, data: bytes, part: Message) -> None:
        if len(data) > self.max_bytes:
            raise IngestRefused(
                f"attachment {filename!r} is {len(data)} bytes; the limit is {self.max_bytes} bytes"
            )
        if any(a.filename == filename and a.data == data for a in self.attachments):
            return  # Gmail sends an invite both inline (text/calendar) and as invite.ics
        content_ids = message_ids(_first(part, "Content-ID"))
        if content_ids:
            self.inline[content_ids[0]] = len(self.attachments)
        self.attachments.append(Attachment(filename, content_type, data))


def _bytes(part: Message) -> bytes:
    data = part.get_payload(decode=True)
    return data if isinstance(data, bytes) else b""


def _text(part: Message) -> str:
    return clean_text(decode_bytes(_bytes(part), part.get_content_charset()))


def _filename(part: Message) -> str | None:
    """The part's file name without directories or control characters (RFC 2231 and 2047 decoded)."""
    try:
        name = part.get_filename()
    except (LookupError, UnicodeError, ValueError):  # RFC 2231 value in a charset that cannot decode
        name = "attachment"
    if not name:
        return None
    name = _UNSAFE_FILENAME.sub("_", clean_text(str(name)).rsplit("/", 1)[-1].rsplit("\\", 1)[-1])
    name = " ".join(name.split()).strip(". ")
    return name[:200] or None


def _default_name(content_type: str, n: int) -> str:
    if content_type == "text/rfc822-headers":
        return "original-headers.txt"
    return f"attachment-{n}{mimetypes.guess_extension(content_type) or '.bin'}"


def _forwarded_name(part: Message) -> str:
    inner = children(part)
    subject = header_text(inner[0], "Subject") if inner else None
    name = _UNSAFE_FILENAME.sub("_", subject or "").strip(". ")[:150]
    return f"{name or 'forwarded message'}.eml"


def _message_bytes(part: Message) -> bytes:
    if not children(part):
        return _bytes(part)
    inner = children(part)[0]
    try:
        return inner.as_bytes(policy=policy.default)
    except Exception:  # a damaged inner message the byte generator refuses; its text form is whole
        text = inner.as_string(policy=policy.compat32)
        try:
            return text.encode("utf-8", errors="surrogateescape")
        except UnicodeError:
            return text.encode("utf-8", errors="replace")
