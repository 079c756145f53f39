"""Channel-agnostic message model.

Every adapter turns its protocol into :class:`InboundMessage` and delivers :class:`OutboundMessage`;
nothing in here knows about MIME, TwiML, stanzas or websockets.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def utcnow() -> datetime:
    """Timezone-aware now; the hub stores UTC everywhere."""
    return datetime.now(UTC)


class IdentityKind(enum.StrEnum):
    """How a contact is reached; ``(kind, value)`` is unique across contacts."""

    EMAIL = "email"
    PHONE = "phone"
    JID = "jid"
    WEBCHAT = "webchat"


class ConversationStatus(enum.StrEnum):
    OPEN = "open"
    PENDING = "pending"
    SNOOZED = "snoozed"
    RESOLVED = "resolved"


class Direction(enum.StrEnum):
    IN = "in"
    OUT = "out"
    NOTE = "note"


class MessageStatus(enum.StrEnum):
    RECEIVED = "received"
    QUEUED = "queued"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    NOTE = "note"


class Role(enum.StrEnum):
    AGENT = "agent"
    SUPERVISOR = "supervisor"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class ThreadHints:
    """What a channel knows about which conversation a message continues."""

    subject: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    reply_tag: str | None = None


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """One message from a customer, as the channel received it.

    ``(channel, external_id)`` is the idempotency key: replaying the same key changes nothing.
    ``sender`` is the raw address; ingest normalises it according to ``identity_kind``.
    """

    channel: str
    channel_kind: str
    external_id: str
    identity_kind: IdentityKind
    sender: str
    text: str
    sender_name: str | None = None
    recipient: str | None = None
    html: str | None = None
    attachments: tuple[Attachment, ...] = ()
    received_at: datetime = field(default_factory=utcnow)
    thread: ThreadHints = field(default_factory=ThreadHints)
    contact_attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What the sender may be told once its message is committed."""

    message_id: int
    conversation_id: int
    contact_id: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One reply to deliver; ``message_id`` lets a channel make redelivery idempotent."""

    message_id: int
    conversation_id: int
    channel: str
    recipient: str
    text: str
    html: str | None = None
    author_name: str | None = None
    created_at: datetime = field(default_factory=utcnow)
    attachments: tuple[Attachment, ...] = ()
    thread: ThreadHints = field(default_factory=ThreadHints)


@dataclass(frozen=True, slots=True)
class SendResult:
    """A channel's answer to ``send``; ``delivered`` when the customer's device already has it."""

    external_id: str | None = None
    delivered: bool = False


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """A message as a customer-facing channel may show it (never a private note)."""

    message_id: int
    conversation_id: int
    direction: Direction
    text: str
    author: str
    at: datetime
    status: MessageStatus
