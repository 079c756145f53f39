"""The small protocols between the hub and its parts: channels, and the router's claim path."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Protocol, runtime_checkable

from sqlalchemy.orm import Session

from hub.model import EventRecord, InboundMessage, IngestResult, OutboundMessage, SendResult, TimelineEntry


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


@runtime_checkable
class Channel(Protocol):
    kind: ClassVar[str]
    name: str

    async def start(self, host: ChannelHost) -> None: ...

    async def send(self, msg: OutboundMessage) -> SendResult: ...

    async def send_typing(self, recipient: str) -> None: ...

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
