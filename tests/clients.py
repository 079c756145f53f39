"""Test clients for the hub's sockets: a web-chat visitor and an agent's /api/live socket.

Both read JSON frames until one of the wanted type arrives, with a deadline, so a test that waits
for something that never comes fails in seconds instead of at the suite timeout. To show that a
frame does *not* arrive, a test makes something visible happen after it and checks that the
visible frame comes first (the bus and each socket keep order) rather than sleeping: cancelling
a pending receive() would leave aiohttp's client socket marked as broken.
"""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import ClientWebSocketResponse, WSMsgType
from sqlalchemy import func, select

from hub.model import IdentityKind, InboundMessage, IngestResult
from storage.models import Message

if TYPE_CHECKING:
    from hub.app import Hub
    from tests.conftest import Live

DEADLINE = 5.0
_client_ids = itertools.count(1)
# Sockets the helpers opened, closed by `close_open_sockets` when a test ends: one left to the
# garbage collector makes aiohttp warn "Unclosed connection" inside whichever test runs then.
_open_sockets: set[ClientWebSocketResponse] = set()


async def close_open_sockets() -> None:
    sockets = list(_open_sockets)
    _open_sockets.clear()
    for ws in sockets:
        await ws.close()


# Bookkeeping frames of routing and presence that tests of other things step over.
ROUTING_NOISE = frozenset(
    {"agent.presence_changed", "queues.updated", "agents.updated", "routing.no_agent", "conversation.queued"}
)


def not_routing_noise(frame: dict[str, Any]) -> bool:
    return not (frame.get("type") == "event" and frame.get("event", {}).get("type") in ROUTING_NOISE)


async def next_frame(
    ws: ClientWebSocketResponse,
    wanted: Callable[[dict[str, Any]], bool] = not_routing_noise,
    *,
    within: float = DEADLINE,
) -> dict[str, Any]:
    """The next JSON frame for which ``wanted`` holds; frames before it are skipped."""
    async with asyncio.timeout(within):
        while True:
            msg = await ws.receive()
            if msg.type != WSMsgType.TEXT:
                raise AssertionError(f"socket ended or sent a non-text frame: {msg!r}")
            frame = msg.json()
            if wanted(frame):
                return frame


def of_type(kind: str) -> Callable[[dict[str, Any]], bool]:
    return lambda frame: frame.get("type") == kind


def event_of(kind: str, **fields: Any) -> Callable[[dict[str, Any]], bool]:
    """Matches a /api/live ``event`` frame of this event type whose fields equal ``fields``."""

    def match(frame: dict[str, Any]) -> bool:
        event = frame.get("event") or {}
        return (
            frame.get("type") == "event"
            and event.get("type") == kind
            and all(event.get(k) == v for k, v in fields.items())
        )

    return match


@dataclass
class Visitor:
    """A web-chat visitor: a signed token and a connected socket, history already read."""

    live: Live
    token: str
    visitor_id: str
    ws: ClientWebSocketResponse
    history: list[dict[str, Any]] = field(default_factory=list)

    async def send(self, text: str, client_id: str | None = None) -> dict[str, Any]:
        """Send a message and return its ack (or the error frame answering it)."""
        client_id = client_id or f"c{next(_client_ids)}"
        await self.ws.send_json({"type": "message", "client_id": client_id, "text": text})
        return await next_frame(
            self.ws, lambda f: f.get("type") in ("ack", "error") and f.get("client_id") == client_id
        )

    async def reconnect(self) -> Visitor:
        """A second socket of the same visitor."""
        return await connect_visitor(self.live, self.token, self.visitor_id)


async def webchat_session(live: Live, **fields: Any) -> dict[str, Any]:
    async with live.http.post(f"{live.base}/webchat/session", json=fields) as r:
        assert r.status == 200, await r.text()
        return dict(await r.json())


async def connect_visitor(live: Live, token: str, visitor_id: str = "") -> Visitor:
    ws = await live.http.ws_connect(f"{live.ws_base}/webchat/ws", params={"token": token})
    _open_sockets.add(ws)
    history = await next_frame(ws)
    assert history["type"] == "history", history
    return Visitor(live, token, visitor_id, ws, history["messages"])


async def new_visitor(live: Live, **fields: Any) -> Visitor:
    session = await webchat_session(live, **fields)
    return await connect_visitor(live, session["token"], session["visitor_id"])


async def visitor_conversation(
    live: Live, text: str = "Hello, I need help", **fields: Any
) -> tuple[Visitor, int]:
    """A visitor who has written once, and the id of the conversation that started."""
    visitor = await new_visitor(live, **fields)
    ack = await visitor.send(text)
    assert ack["type"] == "ack", ack
    conversation_id = await conversation_of_message(live.hub, ack["message_id"])
    return visitor, conversation_id


async def conversation_of_message(hub: Hub, message_id: int) -> int:
    async with hub.db.read() as s:
        return int(
            (await s.execute(select(Message.conversation_id).where(Message.id == message_id))).scalar_one()
        )


async def open_live(live: Live, headers: dict[str, str]) -> ClientWebSocketResponse:
    """An agent's /api/live socket, past its hello frame."""
    ws = await live.http.ws_connect(f"{live.ws_base}/api/live", headers=headers)
    _open_sockets.add(ws)
    hello = await next_frame(ws)
    assert hello["type"] == "hello", hello
    return ws


async def count_rows(hub: Hub, model: Any, *where: Any) -> int:
    async with hub.db.read() as s:
        return int((await s.execute(select(func.count()).select_from(model).where(*where))).scalar_one())


async def call(
    live: Live,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    *,
    json: Any = None,
    data: bytes | None = None,
) -> tuple[int, Any]:
    """One REST request: the status and the decoded JSON body (None when there is none)."""
    body = io.BytesIO(data) if data is not None else None  # aiohttp warns about large raw bytes
    async with live.http.request(method, f"{live.base}{path}", headers=headers, json=json, data=body) as r:
        if r.status == 204 or r.content_length == 0:
            return r.status, None
        assert r.content_type == "application/json", f"{method} {path}: {r.content_type} {await r.text()}"
        return r.status, await r.json()


async def customer_says(
    hub: Hub, visitor_id: str, text: str = "hello", channel: str = "webchat"
) -> IngestResult:
    """A web-chat message ingested directly, as the channel would after its socket read it."""
    return await hub.ingest(
        InboundMessage(
            channel=channel,
            channel_kind="webchat",
            external_id=f"{visitor_id}:m{next(_client_ids)}",
            identity_kind=IdentityKind.WEBCHAT,
            sender=visitor_id,
            text=text,
        )
    )
