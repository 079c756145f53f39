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


class Refused(Exception):
    """A request the hub's rules refuse (a conflict, a full agent, a stale offer, bad input).

    It lives here, beside the model, so that routing can refuse too; the web layer answers it as
    ``{"error", "detail"}`` with ``status``.
    """

    def __init__(self, error: str, detail: str = "", status: int = 409) -> None:
        super().__init__(f"{error}: {detail}" if detail else error)
        self.error = error
        self.detail = detail
        self.status = status


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
    """What a channel knows about which conversation a message continues.

    Inbound, ingest tries in order: ``in_reply_to`` and ``references`` against the channel ids of
    stored messages (either direction), ``reply_tag`` (``c<conversation id>``, from a per-conversation
    reply address), then the same contact's conversation with the same ``subject`` (``Re:`` and
    ``Fwd:`` stripped) inside the subject window. With ``strict`` a message matching none of them
    starts a new conversation (email: a new subject is a new matter); without it, it joins the
    contact's open conversation on the channel (chat, SMS). Outbound, the hub fills in the
    conversation's subject, the newest customer message's id, the ids of the thread and the tag.
    """

    subject: str | None = None
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    reply_tag: str | None = None
    strict: bool = False


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
    # Sent by a machine (auto-reply, delivery report): stored, but never reopens a conversation.
    automated: bool = False
    # The whole original text when ``text`` shows only the new part (quotes and signature collapsed).
    full_text: str | None = None


@dataclass(frozen=True, slots=True)
class IngestResult:
    """What the sender may be told once its message is committed."""

    message_id: int
    conversation_id: int
    contact_id: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class ArchiveRefusal:
    """A message of an imported archive that cannot become an InboundMessage: the import records it
    with its reason and goes on, so one damaged message never stops a history import."""

    # The message's channel id when it could be read (an email's Message-ID), else None.
    external_id: str | None
    # 1-based place of the message in the archive, so a person can find it.
    position: int
    reason: str


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


# -- the event record -----------------------------------------------------------------------


class EventType(enum.StrEnum):
    MESSAGE_RECEIVED = "message.received"
    MESSAGE_QUEUED = "message.queued"
    MESSAGE_SENT = "message.sent"
    MESSAGE_DELIVERED = "message.delivered"
    MESSAGE_READ = "message.read"
    MESSAGE_FAILED = "message.failed"
    MESSAGE_RETRYING = "message.retrying"
    CONVERSATION_CREATED = "conversation.created"
    CONVERSATION_ASSIGNED = "conversation.assigned"
    CONVERSATION_STATUS_CHANGED = "conversation.status_changed"
    CONVERSATION_PRIORITY_CHANGED = "conversation.priority_changed"
    NOTE_ADDED = "note.added"
    CONTACT_CREATED = "contact.created"
    CONTACT_MERGED = "contact.merged"
    AGENT_CREATED = "agent.created"
    AGENT_PRESENCE_CHANGED = "agent.presence_changed"
    AGENT_UPDATED = "agent.updated"
    CONVERSATION_QUEUED = "conversation.queued"
    CONVERSATION_OFFERED = "conversation.offered"
    OFFER_DECLINED = "offer.declined"
    CONVERSATION_UNASSIGNED = "conversation.unassigned"
    ROUTING_NO_AGENT = "routing.no_agent"
    SLA_BREACHED = "conversation.sla_breached"
    QUEUE_UPDATED = "queue.updated"
    MESSAGE_REFUSED = "message.refused"
    CHANNEL_AUDIT = "channel.audit"
    CONVERSATION_SPLIT = "conversation.split"
    CONVERSATION_MERGED = "conversation.merged"


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A stored event (``id`` set) or a live-only signal (``id`` is None)."""

    type: str
    at: datetime
    id: int | None = None
    conversation_id: int | None = None
    contact_id: int | None = None
    message_id: int | None = None
    agent_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "at": self.at.isoformat(),
            "conversation_id": self.conversation_id,
            "contact_id": self.contact_id,
            "message_id": self.message_id,
            "agent_id": self.agent_id,
            "data": self.data,
        }


def new_event(
    type: EventType | str,
    *,
    at: datetime | None = None,
    conversation_id: int | None = None,
    contact_id: int | None = None,
    message_id: int | None = None,
    agent_id: int | None = None,
    **data: Any,
) -> EventRecord:
    return EventRecord(
        type=str(type),
        at=at or utcnow(),
        conversation_id=conversation_id,
        contact_id=contact_id,
        message_id=message_id,
        agent_id=agent_id,
        data=data,
    )
