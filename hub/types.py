"""The two small protocols between the hub and its channels."""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, runtime_checkable

from hub.model import InboundMessage, IngestResult, OutboundMessage, SendResult, TimelineEntry


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
