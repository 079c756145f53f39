"""``/api/live``: the agent's websocket of events they may see, plus typing signals both ways.

Every frame the client sends is checked against the session again, and so is the session before
pushing an event when it was last checked more than ``SESSION_RECHECK_SECONDS`` ago: a revoked
token, a deactivated or a demoted agent loses access within seconds, not at reconnect, even from a
client that never sends a frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from hub.access import Principal, may_see_event
from hub.errors import UserError
from hub.events import EventRecord
from hub.timeline import ID_RANGE
from hub.web.api import HUB, principal
from hub.web.security import TOKEN

log = logging.getLogger(__name__)
LIVE_SOCKETS: web.AppKey[set[web.WebSocketResponse]] = web.AppKey("live_sockets")
# Longest a socket keeps pushing events on a session it has not read again.
SESSION_RECHECK_SECONDS = 5.0


class _Viewer:
    """Who watches a socket, as of the last check of their session (shared by reader and pump)."""

    def __init__(
        self, who: Principal, token: str, authenticate: Callable[[str], Awaitable[Principal | None]]
    ) -> None:
        self.who = who
        self._token = token
        self._authenticate = authenticate
        self._checked_at = time.monotonic()

    @property
    def stale(self) -> bool:
        return time.monotonic() - self._checked_at > SESSION_RECHECK_SECONDS

    async def recheck(self) -> bool:
        """Read the session again (role included); False once it is revoked, expired or deactivated."""
        found = await self._authenticate(self._token)
        if found is None:
            return False
        self.who, self._checked_at = found, time.monotonic()
        return True


def frame_for(event: EventRecord) -> dict[str, Any]:
    if event.type == "typing":
        return {"type": "typing", "conversation_id": event.conversation_id, "who": event.data.get("who")}
    return {"type": "event", "event": event.as_json()}


async def live(request: web.Request) -> web.StreamResponse:
    who = await principal(request)
    hub = request.app[HUB]
    ws = web.WebSocketResponse(heartbeat=30, max_msg_size=16 * 1024)
    await ws.prepare(request)
    request.app[LIVE_SOCKETS].add(ws)
    viewer = _Viewer(who, request[TOKEN], hub.authenticate)
    watching = who.is_supervisor
    async with hub.bus.subscribe() as queue:
        pump: asyncio.Task[None] | None = None
        if watching:
            hub.supervisors_watching += 1
        try:
            # An open inbox is the agent's heartbeat: with their chosen status it makes them available.
            # Events it causes wait in the queue until the pump starts, after the hello.
            await hub.router.connected(who.id)
            presence = await hub.router.presence_of(who.id)
            await ws.send_json({"type": "hello", "agent": {**who.as_json(), **presence}})
            pump = asyncio.get_running_loop().create_task(_pump(ws, queue, viewer))
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                if not await viewer.recheck():
                    await ws.close(code=4401, message=b"session expired")
                    break
                await _on_client_frame(request, ws, viewer.who, frame.data)
        finally:
            if pump is not None:
                pump.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pump
            request.app[LIVE_SOCKETS].discard(ws)
            if watching:
                hub.supervisors_watching -= 1
            await hub.router.disconnected(who.id)
    return ws


async def _pump(ws: web.WebSocketResponse, queue: asyncio.Queue[EventRecord | None], viewer: _Viewer) -> None:
    while True:
        event = await queue.get()
        if event is None:
            # We fell behind (or the hub is stopping): the client reloads from the REST API.
            with contextlib.suppress(ConnectionResetError):
                await ws.send_json({"type": "resync"})
            await ws.close()
            return
        if viewer.stale:
            try:
                valid = await viewer.recheck()
            except Exception:  # e.g. the database is unreachable: fail closed; the client reconnects
                log.exception("could not re-check a live session")
                await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"try again")
                return
            if not valid:
                await ws.close(code=4401, message=b"session expired")
                return
        if may_see_event(viewer.who, event):
            try:
                await ws.send_str(json.dumps(frame_for(event)))
            except ConnectionResetError:
                return


async def _on_client_frame(request: web.Request, ws: web.WebSocketResponse, who: Principal, raw: str) -> None:
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):  # deep nesting would otherwise end the socket's handler
        await ws.send_json({"type": "error", "error": "invalid_json", "detail": "frames must be JSON"})
        return
    kind = data.get("type") if isinstance(data, dict) else None
    if kind == "ping":
        await ws.send_json({"type": "pong"})
    elif kind == "typing":
        conversation_id = data.get("conversation_id")
        if type(conversation_id) is not int or conversation_id not in ID_RANGE:
            await ws.send_json(
                {"type": "error", "error": "invalid_frame", "detail": "conversation_id must be an int"}
            )
            return
        hub = request.app[HUB]
        try:
            conv = await hub.timeline.conversation_summary(who, conversation_id)
        except UserError as exc:
            await ws.send_json({"type": "error", "error": exc.error, "detail": exc.detail})
            return
        await hub.agent_typing(conversation_id, conv["channel"], conv["address"])
    else:
        await ws.send_json(
            {"type": "error", "error": "unknown_frame", "detail": "frame type must be ping or typing"}
        )
