"""SQLAlchemy 2 typed models.

Invariants the schema itself enforces (the application never relies on memory for them):

* ``messages (channel, external_id)`` is unique: ingest is idempotent.
* ``contact_identities (kind, value)`` is unique: one address belongs to one contact.
* ``outbox.message_id`` is unique: a reply is dispatched from exactly one row.
* ``events`` rows are only ever inserted; their ``id`` increases and is the export cursor.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a real BIGINT identity.
BigId = BigInteger().with_variant(Integer(), "sqlite")

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are stored in UTC and always come back timezone-aware, on SQLite too.

    On SQLite the value is stored as text in the same format SQLAlchemy's DATETIME uses
    (``YYYY-MM-DD HH:MM:SS.ffffff``, which sorts correctly), converted with the C-implemented
    ``isoformat``/``fromisoformat`` rather than SQLAlchemy's generic formatting: ingest writes
    several timestamps per message, and this was a visible share of its time.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Any) -> Any:
        return dialect.type_descriptor(String(32) if dialect.name == "sqlite" else DateTime(timezone=True))

    def process_bind_param(self, value: datetime | None, dialect: Any) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        if dialect.name == "sqlite":
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")
        return value

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            return datetime.fromisoformat(value).replace(tzinfo=UTC)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


class Agent(Base):
    __tablename__ = "agents"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime]
    # Routing. `load` is the capacity ledger: units taken by the agent's assigned conversations.
    # The CHECK makes an overrun impossible whatever the code does; claims also test it in their
    # WHERE clause so a full agent is a refused claim, not an exception.
    capacity: Mapped[int] = mapped_column(Integer, server_default=text("100"), default=100)
    load: Mapped[int] = mapped_column(Integer, server_default=text("0"), default=0)
    skills: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'"), default=dict)
    channel_kinds: Mapped[list[str]] = mapped_column(JSON, server_default=text("'[]'"), default=list)
    # status is what the agent chose (online / away / offline); presence_at the last heartbeat of an
    # open inbox; presence the effective state the router last observed (the chosen status while a
    # heartbeat is fresh, else offline) and presence_changed_at when it became so (grace periods).
    status: Mapped[str] = mapped_column(String(10), server_default=text("'online'"), default="online")
    presence: Mapped[str] = mapped_column(String(10), server_default=text("'offline'"), default="offline")
    presence_at: Mapped[datetime | None]
    presence_changed_at: Mapped[datetime | None]
    last_assigned_at: Mapped[datetime | None]

    __table_args__ = (CheckConstraint("load >= 0 AND load <= capacity", name="load_within_capacity"),)


class ApiToken(Base):
    """Bearer and cookie sessions; only a SHA-256 of the token is stored."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    agent_id: Mapped[int] = mapped_column(ForeignKey("agents.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime]


class Contact(Base):
    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id"))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ContactIdentity(Base):
    __tablename__ = "contact_identities"
    __table_args__ = (UniqueConstraint("kind", "value"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(20))
    value: Mapped[str] = mapped_column(String(320))
    created_at: Mapped[datetime]


class Conversation(Base):
    __tablename__ = "conversations"
    __table_args__ = (
        Index(None, "contact_id", "channel", "id"),
        Index(None, "status", "last_message_at"),
        Index(None, "assignee_id", "status"),
        Index(None, "queue", "enqueued_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    channel: Mapped[str] = mapped_column(String(100))
    channel_kind: Mapped[str] = mapped_column(String(20))
    # The customer's address on this channel, in normalised form: where replies go.
    address: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(20))
    assignee_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    subject: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    last_message_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    # Routing: the queue it waits in (None when not waiting), since when, and what its assignment
    # took from the assignee's capacity (given back exactly on release, whatever the costs are then).
    queue: Mapped[str | None] = mapped_column(String(100))
    enqueued_at: Mapped[datetime | None]
    assigned_at: Mapped[datetime | None]
    assigned_cost: Mapped[int] = mapped_column(Integer, server_default=text("0"), default=0)
    first_reply_at: Mapped[datetime | None]
    # Bumped by every routing change: an offer accepted after the conversation moved on is refused.
    routing_version: Mapped[int] = mapped_column(Integer, server_default=text("0"), default=0)
    # Offer mode: the agent it is offered to (capacity reserved), until when, and who declined.
    offered_to: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    offer_expires_at: Mapped[datetime | None]
    declined_by: Mapped[list[int]] = mapped_column(JSON, server_default=text("'[]'"), default=list)
    # Set when an agent merged this conversation into another: its messages moved there.
    merged_into_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id"))


class QueueRow(Base):
    """A routing queue's definition (routing.model.QueueSpec as JSON), editable through the API."""

    __tablename__ = "queues"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, default=0)  # match order: first match wins
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    updated_at: Mapped[datetime]


class QueueWait(Base):
    """One stay of a conversation in a queue, from enqueue to its outcome: the record that queue
    statistics (service level, speed of answer, abandonment) are computed from."""

    __tablename__ = "queue_waits"
    __table_args__ = (
        Index(None, "queue", "ended_at"),
        Index(None, "conversation_id", "ended_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(BigInteger)
    queue: Mapped[str] = mapped_column(String(100))
    channel_kind: Mapped[str] = mapped_column(String(20))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    enqueued_at: Mapped[datetime]
    ended_at: Mapped[datetime | None]
    # answered (assigned to an agent), abandoned (resolved while waiting), moved (overflow/transfer)
    outcome: Mapped[str | None] = mapped_column(String(20))
    agent_id: Mapped[int | None] = mapped_column(BigInteger)
    # When the wait passed its queue's first-response target (recorded once, with an event).
    breached_at: Mapped[datetime | None]


class Message(Base):
    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("channel", "external_id"),
        Index(None, "conversation_id", "id"),
        Index(None, "contact_id", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id"))
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id"))
    channel: Mapped[str] = mapped_column(String(100))
    # Idempotency key for inbound messages; the channel's id after a successful send for outbound.
    external_id: Mapped[str | None] = mapped_column(String(500))
    direction: Mapped[str] = mapped_column(String(10))
    status: Mapped[str] = mapped_column(String(20))
    agent_id: Mapped[int | None] = mapped_column(ForeignKey("agents.id"))
    sender: Mapped[str | None] = mapped_column(String(320))
    author_name: Mapped[str | None] = mapped_column(String(200))
    text: Mapped[str] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime]


class AttachmentRow(Base):
    """Attachment metadata; the bytes live content-addressed under the data directory."""

    __tablename__ = "attachments"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), index=True)
    filename: Mapped[str] = mapped_column(String(300))
    content_type: Mapped[str] = mapped_column(String(200))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index(None, "conversation_id", "id"), Index(None, "type", "id"))

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    type: Mapped[str] = mapped_column(String(60))
    at: Mapped[datetime]
    conversation_id: Mapped[int | None] = mapped_column(BigInteger)
    contact_id: Mapped[int | None] = mapped_column(BigInteger)
    message_id: Mapped[int | None] = mapped_column(BigInteger)
    agent_id: Mapped[int | None] = mapped_column(BigInteger)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class OutboxRow(Base):
    """One reply waiting for, or done with, delivery: a job as a row (status, attempts, lease)."""

    __tablename__ = "outbox"
    __table_args__ = (Index(None, "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id"), unique=True)
    channel: Mapped[str] = mapped_column(String(100))
    status: Mapped[str] = mapped_column(String(20))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ChannelCursor(Base):
    """Where a long-lived receiver stopped (IMAP UIDVALIDITY/UID, ...), advanced only after commit."""

    __tablename__ = "channel_cursors"
    __table_args__ = (UniqueConstraint("channel", "key"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(200))
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime]


class Refusal(Base):
    """An inbound message a channel could not store, and why: never a silent drop, and audits can
    tell a refused message from a lost one."""

    __tablename__ = "refusals"
    __table_args__ = (UniqueConstraint("channel", "external_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    channel: Mapped[str] = mapped_column(String(100))
    external_id: Mapped[str] = mapped_column(String(500))
    sender: Mapped[str | None] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime]
