"""Delivery status notifications (RFC 3464, inside an RFC 6522 multipart/report).

Only standard DSNs are recognised; free-text bounces of old mailers are ordinary messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser

from channels.email.decode import children, decode_bytes, message_ids, raw_values

_FIELD_LINE = re.compile(r"^([A-Za-z0-9-]+)\s*:\s*(.*)$")


@dataclass(frozen=True, slots=True)
class Bounce:
    """What a DSN says about one of our outbound messages.

    ``action`` is "failed" for a bounce proper; "delayed" only means the remote side keeps trying,
    so a consumer marks the outbound message failed only when :attr:`failed` is true.
    """

    original_message_id: str | None
    recipient: str | None
    status: str | None
    reason: str
    action: str | None

    @property
    def failed(self) -> bool:
        return self.action == "failed" or (self.action is None and (self.status or "").startswith("5"))


def parse_bounce(msg: Message) -> Bounce | None:
    """The bounce a message reports, or None when it is not a delivery-status report."""
    if msg.get_content_type() != "multipart/report":
        return None
    if str(msg.get_param("report-type", "")).lower() != "delivery-status":
        return None
    fields: list[dict[str, str]] = []
    original: str | None = None
    for part in msg.walk():
        ctype = part.get_content_type()
        if ctype in ("message/delivery-status", "message/global-delivery-status"):
            fields = _status_blocks(part)
        elif ctype in ("message/rfc822", "message/global", "text/rfc822-headers") and original is None:
            original = _original_id(part)
    if original is None:
        for name in ("Original-Message-ID", "X-Original-Message-ID"):
            ids = [i for v in raw_values(msg, name) for i in message_ids(v)]
            original = original or (ids[0] if ids else None)
    per_message = fields[0] if fields else {}
    recipients = fields[1:] or [{}]
    failing = next((f for f in recipients if f.get("action", "").lower() == "failed"), recipients[0])
    original = original or next(iter(message_ids(per_message.get("original-message-id"))), None)
    recipient = _typed_value(failing.get("final-recipient") or failing.get("original-recipient"))
    status = (failing.get("status") or "").split(" ", 1)[0] or None
    diagnostic = _typed_value(failing.get("diagnostic-code"))
    action = failing.get("action", "").lower() or None
    reason = diagnostic or (f"delivery status {status}" if status else "the message could not be delivered")
    return Bounce(original, recipient, status, reason, action)


def _typed_value(value: str | None) -> str | None:
    """``rfc822; bob@example.com`` -> ``bob@example.com`` (RFC 3464 §2.1.2: type; value)."""
    if not value:
        return None
    return value.split(";", 1)[1].strip() if ";" in value else value.strip()


def _status_blocks(part: Message) -> list[dict[str, str]]:
    """The per-message block and the per-recipient blocks of a delivery-status part."""
    if part.is_multipart():
        return [{k.lower(): " ".join(v.split()) for k, v in _raw_fields(b)} for b in children(part)]
    data = part.get_payload(decode=True)
    text = decode_bytes(data) if isinstance(data, bytes) else ""
    blocks: list[dict[str, str]] = []
    for chunk in re.split(r"\r?\n\s*\r?\n", text):
        block: dict[str, str] = {}
        last = None
        for line in chunk.splitlines():
            match = _FIELD_LINE.match(line)
            if match:
                last = match.group(1).lower()
                block[last] = match.group(2).strip()
            elif last and line[:1].isspace():
                block[last] += " " + line.strip()
        if block:
            blocks.append(block)
    return blocks


def _raw_fields(block: Message) -> list[tuple[str, str]]:
    return [(name, raw_values(block, name)[0]) for name in dict.fromkeys(block.keys())]


def _original_id(part: Message) -> str | None:
    if part.is_multipart():
        inner = children(part)[0] if children(part) else Message()
    else:
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):
            return None
        inner = BytesParser(policy=policy.default).parsebytes(data, headersonly=True)
    ids = [i for v in raw_values(inner, "Message-ID") for i in message_ids(v)]
    return ids[0] if ids else None
