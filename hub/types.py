"""The small protocols between the hub and its parts: channels, and the router's claim path."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

from sqlalchemy.orm import Session

from hub.model import (
    ArchiveRefusal,
    EventRecord,
    InboundMessage,
    IngestResult,
    MessageStatus,
    OutboundMessage,
    SendResult,
    TimelineEntry,
)


class ChannelHost(Protocol):
    """What the hub offers a channel. ``ingest`` returns only after the message is committed:
    a channel acknowledges its sender only then (commit before acknowledge)."""

    async def ingest(self, msg: InboundMessage) -> IngestResult: ...

    async def history(self, channel: str, address: str, limit: int = 100) -> list[TimelineEntry]:
        """What the customer at ``address`` may see again (never private notes)."""
        ...

    async def customer_typing(self, channel: str, address: str) -> None:
        """The customer is typing; shown live to agents, never stored."""
        ...

    async def load_cursor(self, channel: str, key: str) -> str | None:
        """Where this channel's receiver ``key`` (e.g. a mailbox) stopped, or None at first."""
        ...

    async def save_cursor(self, channel: str, key: str, value: str) -> None:
        """Move the cursor; call only after what it points past is committed."""
        ...

    async def delivery_update(
        self, channel: str, external_id: str, status: MessageStatus, reason: str | None = None
    ) -> int | None:
        """A delivery report (a bounce, a status callback) about the outbound message this channel
        knows as ``external_id``: its status moves (never backwards) and an event records it.
        Returns the message's id, or None when no outbound message has that id."""
        ...

    async def refused(
        self, channel: str, external_id: str | None, reason: str, *, sender: str | None = None
    ) -> None:
        """Record (as a ``message.refused`` event) an inbound message the channel could not store,
        so nothing is dropped silently and audits can tell it from a lost one."""
        ...

    async def known_ids(self, channel: str, external_ids: Collection[str]) -> set[str]:
        """Which of these channel ids the hub holds: stored messages and recorded refusals."""
        ...

    async def record(self, events: list[EventRecord]) -> None:
        """Store channel events (e.g. ``channel.audit``) in the event record and publish them."""
        ...


class Archive(Protocol):
    """Historical messages of one channel read from a file (an mbox), for ``hub import``.

    Iterating reads the file as it goes (an archive may be larger than memory) and yields each
    message in file order, or an :class:`ArchiveRefusal` where one cannot be read; iterate once.
    """

    # How many messages the archive holds, counted before reading them; None when unknown.
    total: int | None

    def __iter__(self) -> Iterator[InboundMessage | ArchiveRefusal]: ...


@runtime_checkable
class Channel(Protocol):
    kind: ClassVar[str]
    name: str

    async def start(self, host: ChannelHost) -> None: ...

    async def send(self, msg: OutboundMessage) -> SendResult: ...

    async def send_typing(self, recipient: str) -> None: ...

    def outbound_id(self, msg: OutboundMessage) -> str | None:
        """The id this channel will give ``msg`` (an email's Message-ID), fixed before the first
        attempt so that every retry reuses it; None when the remote side assigns ids."""
        ...

    async def stop(self) -> None: ...

    def routes(self) -> list[Any]:
        """aiohttp route definitions this channel serves (webhooks, websockets), or none."""
        ...


class Assignments(Protocol):
    """The router's one claim path, as the hub's own writes use it (replies, PATCH, status changes).

    The methods run inside the caller's write transaction (a synchronous ``Session``), return the
    events they caused for the caller to record, and raise :class:`hub.model.Refused` before
    writing anything when the change is not allowed (agent at capacity, conversation moved on).
    """

    def assign(
        self,
        session: Session,
        conversation_id: int,
        agent_id: int | None,
        *,
        by: int | None,
        reason: str,
        expected_assignee: int | None,
        now: datetime,
    ) -> list[EventRecord]: ...

    def status_changed(
        self, session: Session, conversation_id: int, status: str, *, now: datetime
    ) -> list[EventRecord]: ...

    def wake(self) -> None:
        """Something changed that may let the router assign: look again soon."""
        ...


class SupervisorView(Protocol):
    """What the supervisor's endpoints read (``routing.stats.Supervision``): JSON-ready reports of
    the queues and the agents, and the Prometheus text exposition."""

    async def queues(self) -> dict[str, Any]: ...

    async def agents(self) -> dict[str, Any]: ...

    async def metrics(self) -> str: ...
