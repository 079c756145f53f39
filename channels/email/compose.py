"""Turn an :class:`OutboundMessage` into the MIME message the customer receives (RFC 5322, RFC 2045-2049).

Pure functions: no network, no clock except the message's own ``created_at``. The caller generates the
Message-ID (:func:`new_message_id`) and stores it *before* the first attempt, so a retry after a lost
answer sends the same message (same Message-ID and Date) and the customer's client shows it once.

Header injection is impossible by construction: display names and subjects lose every control
character, addresses go through :class:`email.headerregistry.Address`, and message ids from the
thread (which a customer's mail client chose) are kept only when they look like a msg-id.
"""

from __future__ import annotations

import html
import re
import secrets
from collections.abc import Callable, Iterable
from datetime import UTC
from email import policy as email_policy
from email.errors import MessageError
from email.headerregistry import Address, BaseHeader, HeaderRegistry, UnstructuredHeader
from email.message import EmailMessage
from email.policy import Policy
from email.utils import format_datetime

from hub.errors import PermanentError
from hub.model import Attachment, OutboundMessage

# At most this many ids in References: the thread's root and the newest ones (RFC 5322 3.6.4 lets a
# reply trim the list; keeping the root is what Thunderbird and mutt do so threads stay rooted).
MAX_REFERENCES = 20
# Longest message id kept from a thread; longer ones are refused as garbage (RFC 5322 lines are < 998).
MAX_MSG_ID_LEN = 250

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
_SPACES = re.compile(r"\s+")
# "Re:", "RE[2]:", "Aw:", "SV:", "Antw:", "Odp:", "VS:", "Ref:", "R:" as clients in many languages write them.
_REPLY_PREFIX = re.compile(r"^\s*(?:(?:re|aw|sv|antw|odp|vs|ref|r)(?:\[\d+\])?\s*:\s*)+", re.IGNORECASE)
_MSG_ID_CORE = re.compile(r"[!-;=?-~]+@[!-;=?-~]+")  # printable ASCII except "<", ">" and space
_MIME_TYPE = re.compile(r"[A-Za-z0-9][\w.+-]*/[A-Za-z0-9][\w.+-]*")
_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n+")


class _MsgIdListHeader(UnstructuredHeader, BaseHeader):
    """In-Reply-To and References: folded only between ids, never RFC 2047-encoded.

    The standard library treats these headers as unstructured text and encodes an id longer than a
    line (Outlook's often are) as an encoded-word, which breaks threading at the other end.
    """

    def fold(self, *, policy: Policy) -> str:
        limit = policy.max_line_length or 998
        lines: list[str] = []
        line = f"{self.name}:"
        has_id = False
        for ident in str(self).split():
            if has_id and len(line) + 1 + len(ident) > limit:
                lines.append(line)
                line = ""
            line += " " + ident
            has_id = True
        lines.append(line)
        return policy.linesep.join(lines) + policy.linesep


def _header_registry() -> HeaderRegistry:
    registry = HeaderRegistry()
    registry.map_to_type("in-reply-to", _MsgIdListHeader)
    registry.map_to_type("references", _MsgIdListHeader)
    return registry


# SMTP line ends, and 7-bit bodies (quoted-printable or base64) so that the bytes on the wire do not
# depend on whether the server offers 8BITMIME.
POLICY = email_policy.SMTP.clone(header_factory=_header_registry(), cte_type="7bit")


def new_message_id(domain: str) -> str:
    """A fresh, unguessable ``<id@domain>``; store it with the outbox row before the first attempt."""
    domain = domain.strip().lower()
    if not domain or not _MSG_ID_CORE.fullmatch(f"x@{domain}") or "@" in domain:
        raise ValueError(f"not a domain for a Message-ID: {domain!r}")
    return f"<{secrets.token_hex(16)}@{domain}>"


def reply_address(inbox: str, conversation_id: int) -> str:
    """The conversation's own address by plus-addressing: ``support@example.com``, 1234 ->
    ``support+c1234@example.com``. Replies to it find the conversation even when a client drops
    In-Reply-To; an inbox address that already has a tag keeps it (``support+x+c1234@``)."""
    if conversation_id <= 0:
        raise ValueError(f"conversation id must be positive, not {conversation_id}")
    address = mailbox(inbox)
    return Address(username=f"{address.username}+c{conversation_id}", domain=address.domain).addr_spec


def reply_subject(subject: str | None) -> str:
    """``"Re: "`` and the subject without any reply prefix it already had (never ``Re: Re:``)."""
    return f"Re: {_REPLY_PREFIX.sub('', one_line(subject or ''))}".rstrip()


def one_line(text: str) -> str:
    """``text`` without control characters or line breaks, whitespace collapsed: safe in any header."""
    return _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()


def display_name(author_name: str | None, inbox_name: str | None) -> str | None:
    """``"Alice via Support"``, or whichever of the two is known, or None."""
    author = one_line(author_name or "")
    inbox = one_line(inbox_name or "")
    if author and inbox:
        return f"{author} via {inbox}"
    return author or inbox or None


def clean_msg_id(value: str) -> str | None:
    """``<id@host>`` when ``value`` is a plausible msg-id (with or without its brackets), else None."""
    core = value.strip()
    if core.startswith("<") and core.endswith(">"):
        core = core[1:-1]
    if len(core) > MAX_MSG_ID_LEN or not _MSG_ID_CORE.fullmatch(core):
        return None
    return f"<{core}>"


def references_chain(references: Iterable[str], in_reply_to: str | None) -> list[str]:
    """The References of a reply (RFC 5322 3.6.4): the thread's ids, oldest first, ending with the
    message replied to; duplicates and garbage dropped; bounded to the root and the newest ids."""
    chain: list[str] = []
    for value in [*references, *([in_reply_to] if in_reply_to else [])]:
        ident = clean_msg_id(value)
        if ident is not None:
            if ident in chain:
                chain.remove(ident)
            chain.append(ident)
    if len(chain) > MAX_REFERENCES:
        chain = [chain[0], *chain[len(chain) - MAX_REFERENCES + 1 :]]
    return chain


def text_to_html(text: str) -> str:
    """The agent's plain text as HTML: escaped, blank lines as paragraphs, single newlines as <br>."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").strip("\n")
    paragraphs = [p for p in _PARAGRAPH_BREAK.split(text) if p.strip()]
    body = "\n".join("<p>" + html.escape(p).replace("\n", "<br>\n") + "</p>" for p in paragraphs)
    return f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"></head><body>\n{body}\n</body></html>\n'


def mailbox(addr_spec: str, name: str | None = None) -> Address:
    """``addr_spec`` (a bare address) with an optional display name; an internationalised domain in
    its ASCII form (IDNA), since the bytes on the wire are 7-bit. ``ValueError`` when it is not one
    address (a non-ASCII local part, which would need SMTPUTF8, included)."""
    try:
        parsed = Address(addr_spec=addr_spec.strip())
        if not parsed.username or not parsed.domain:
            raise ValueError("no local part or no domain")
        domain = parsed.domain if parsed.domain.isascii() else parsed.domain.encode("idna").decode("ascii")
    except (ValueError, IndexError, UnicodeError, MessageError) as exc:
        raise ValueError(f"not an email address: {one_line(addr_spec)!r} ({exc})") from exc
    return Address(display_name=name or "", username=parsed.username, domain=domain)


def _attach(message: EmailMessage, attachment: Attachment, data: bytes) -> None:
    content_type = attachment.content_type.strip().lower()
    if not _MIME_TYPE.fullmatch(content_type) or content_type.startswith(("multipart/", "message/")):
        # multipart/* cannot carry bytes; message/* would have to be a parsed message: send as a file.
        content_type = "application/octet-stream"
    maintype, subtype = content_type.split("/", 1)
    filename = one_line(attachment.filename).replace("/", "_").replace("\\", "_") or "attachment"
    message.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)


def _read_data(attachment: Attachment) -> bytes:
    return attachment.data


def compose(
    msg: OutboundMessage,
    *,
    from_address: str,
    from_name: str | None,
    reply_to: str | None,
    message_id: str,
    in_reply_to: str | None,
    references: list[str],
    open_attachment: Callable[[Attachment], bytes] = _read_data,
) -> EmailMessage:
    """The reply as a MIME message: multipart/alternative (text, HTML), inside multipart/mixed when
    there are attachments.

    ``from_name`` is the inbox's display name; the agent's (``msg.author_name``) goes before it.
    ``in_reply_to`` and ``references`` are the thread's ids as stored; the Subject is
    ``Re: <conversation subject>`` when the message replies to one. ``open_attachment`` reads an
    attachment's bytes (default: :attr:`Attachment.data`). Raises :class:`PermanentError` when the
    recipient is not an email address; ``ValueError`` for a bad ``from_address``, ``reply_to`` or
    ``message_id`` (configuration and caller errors).
    """
    try:
        to = mailbox(msg.recipient)
    except ValueError as exc:
        raise PermanentError(str(exc)) from exc
    own_id = clean_msg_id(message_id)
    if own_id is None:
        raise ValueError(f"not a Message-ID: {message_id!r}")

    parent = clean_msg_id(in_reply_to) if in_reply_to else None
    chain = references_chain(references, parent)
    subject = msg.thread.subject or ""

    message = EmailMessage(policy=POLICY)
    message["From"] = mailbox(from_address, display_name(msg.author_name, from_name))
    message["To"] = to
    if reply_to:
        message["Reply-To"] = mailbox(reply_to, display_name(None, from_name))
    message["Subject"] = reply_subject(subject) if parent or chain else one_line(subject)
    created = msg.created_at if msg.created_at.tzinfo else msg.created_at.replace(tzinfo=UTC)
    message["Date"] = format_datetime(created)
    message["Message-ID"] = own_id
    if parent:
        message["In-Reply-To"] = parent
    if chain:
        message["References"] = " ".join(chain)
    # RFC 3834: a person wrote this; vacation responders may answer it.
    message["Auto-Submitted"] = "no"

    text = msg.text.replace("\r\n", "\n").replace("\r", "\n")
    message.set_content(text)
    message.add_alternative(msg.html if msg.html is not None else text_to_html(text), subtype="html")
    for attachment in msg.attachments:
        _attach(message, attachment, open_attachment(attachment))
    return message
