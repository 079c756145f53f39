"""The web-chat channel: widget script, demo page, visitor sessions and the visitor websocket.

Wire protocol (JSON text frames) — visitor: ``message`` {client_id, text}, ``typing``; server:
``history``, ``ack`` {client_id, message_id} (only after commit), ``message``, ``typing``,
``error`` {error, detail[, client_id]}. The ``client_id`` is the idempotency key: a widget that
lost its connection re-sends unacknowledged messages with the same id and gets the same message_id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import WSCloseCode, WSMsgType, web

from channels.base import BaseChannel, register_channel
from channels.webchat.tokens import (
    TokenError,
    TokenSigner,
    Visitor,
    check_user_hash,
    new_visitor_id,
    verified_visitor_id,
)
from hub.errors import IngestRefused
from hub.model import (
    Direction,
    IdentityKind,
    InboundMessage,
    OutboundMessage,
    SendResult,
    TimelineEntry,
)

log = logging.getLogger(__name__)
STATIC = Path(__file__).parent / "static"


def _error(status: int, error: str, detail: str, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status, headers=headers)


def _json_object(raw: str | bytes) -> dict[str, Any] | None:
    """``raw`` parsed as a JSON object of real text, else None.

    Refused besides non-objects: nesting deep enough to exhaust the parser's recursion (it would
    kill the socket's handler) and unpaired surrogate escapes such as ``"\\ud800"``, which are valid
    JSON but not text: no database stores them, and since ingest commits messages in groups, one
    such message would fail the messages of every other visitor in its batch.
    """
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict):
        return None
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return None
    return data


def _frame(entry: TimelineEntry) -> dict[str, Any]:
    return {
        "message_id": entry.message_id,
        "direction": entry.direction.value,
        "text": entry.text,
        "author": entry.author,
        "at": entry.at.isoformat(),
    }


@register_channel
class WebChatChannel(BaseChannel):
    kind: ClassVar[str] = "webchat"
    max_body_len: ClassVar[int] = 5_000
    # Largest websocket frame accepted; bigger frames close the socket with 1009 (RFC 6455 §7.4.1).
    max_frame_bytes: ClassVar[int] = 64 * 1024
    # Visitor typing signals closer together than this are dropped.
    typing_min_interval: ClassVar[float] = 1.0

    def __init__(self, name: str, settings: Mapping[str, Any], *, data_dir: Any = None) -> None:
        super().__init__(name, settings, data_dir=data_dir)
        secret = settings.get("token_secret")
        if not secret:
            raise ValueError("web chat needs token_secret (the hub supplies its server secret)")
        self.signer = TokenSigner(
            secret if isinstance(secret, bytes) else str(secret).encode(),
            int(float(settings.get("token_ttl_days", 30)) * 86400),
        )
        identity = settings.get("identity_secret")
        self.identity_secret = identity.encode() if isinstance(identity, str) and identity else None
        self.allowed_origins = {o.rstrip("/") for o in settings.get("allowed_origins", [])}
        self.max_body_len = int(settings.get("max_message_chars", type(self).max_body_len))  # type: ignore[misc]
        self.title = str(settings.get("title", "Chat with us"))
        self._sockets: dict[str, set[web.WebSocketResponse]] = {}

    # -- routes ----------------------------------------------------------------------------

    def routes(self) -> list[Any]:
        return [
            web.get("/widget.js", self._widget),
            web.get("/chat", self._demo),
            web.post("/webchat/session", self._session),
            web.options("/webchat/session", self._preflight),
            web.get("/webchat/ws", self._websocket),
        ]

    async def _widget(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(
            STATIC / "widget.js",
            headers={
                "Content-Type": "text/javascript; charset=utf-8",
                "Cache-Control": "public, max-age=300",
            },
        )

    async def _demo(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "chat.html", headers={"Content-Type": "text/html; charset=utf-8"})

    def _origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if not self.allowed_origins or origin is None:
            return True
        return origin.rstrip("/") in self.allowed_origins or origin == f"{request.scheme}://{request.host}"

    def _cors(self, request: web.Request) -> dict[str, str]:
        origin = request.headers.get("Origin")
        if not origin or not self._origin_allowed(request):
            return {}
        # No credentials cross origins: the visitor token travels in the body and the query string.
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": "POST, OPTIONS",
            "Access-Control-Allow-Headers": "Content-Type",
            "Access-Control-Max-Age": "600",
            "Vary": "Origin",
        }

    async def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=self._cors(request))

    async def _session(self, request: web.Request) -> web.Response:
        cors = self._cors(request)
        if not self._origin_allowed(request):
            return _error(403, "origin_not_allowed", "this site may not embed the chat widget", cors)
        body = _json_object(await request.read()) if request.can_read_body else {}
        if body is None:
            return _error(400, "invalid_json", "the body must be a JSON object of UTF-8 text", cors)
        fields = {k: body.get(k) for k in ("name", "email", "user_id", "user_hash")}
        for key, value in fields.items():
            if value is not None and (not isinstance(value, str) or len(value) > 320):
                return _error(422, "invalid_field", f"{key} must be a string of at most 320 characters", cors)
        visitor_id, verified = new_visitor_id(), False
        if fields["user_id"] is not None or fields["user_hash"] is not None:
            if self.identity_secret is None:
                return _error(
                    422,
                    "identity_verification_off",
                    "set the channel's identity secret to verify users",
                    cors,
                )
            if (
                not fields["user_id"]
                or not fields["user_hash"]
                or not check_user_hash(self.identity_secret, fields["user_id"], fields["user_hash"])
            ):
                return _error(403, "invalid_user_hash", "user_hash does not match user_id", cors)
            visitor_id, verified = verified_visitor_id(fields["user_id"]), True
        token = self.signer.issue(visitor_id, name=fields["name"], email=fields["email"], verified=verified)
        return web.json_response({"token": token, "visitor_id": visitor_id}, headers=cors)

    # -- the visitor socket ------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        if not self._origin_allowed(request):
            return _error(403, "origin_not_allowed", "this site may not embed the chat widget")
        try:
            visitor = self.signer.verify(request.query.get("token", ""))
        except TokenError as exc:
            # Readable cross-origin, so a widget on another site learns to start a new session.
            return _error(401, "invalid_token", str(exc), self._cors(request))
        ws = web.WebSocketResponse(heartbeat=30, max_msg_size=self.max_frame_bytes)
        await ws.prepare(request)
        sockets = self._sockets.setdefault(visitor.id, set())
        sockets.add(ws)
        try:
            assert self.host is not None
            history = await self.host.history(self.name, visitor.id)
            await ws.send_json({"type": "history", "messages": [_frame(e) for e in history]})
            last_typing = 0.0
            async for frame in ws:
                if frame.type == WSMsgType.TEXT:
                    data = _json_object(frame.data)
                    if data is None:
                        await self._send_error(ws, "invalid_json", "frames must be JSON objects of text")
                    elif data.get("type") == "message":
                        await self._on_message(visitor, ws, data)
                    elif data.get("type") == "typing":
                        now = time.monotonic()
                        if now - last_typing >= self.typing_min_interval:
                            last_typing = now
                            await self.host.customer_typing(self.name, visitor.id)
                    elif data.get("type") == "ping":
                        await ws.send_json({"type": "pong"})
                    else:
                        await self._send_error(
                            ws, "unknown_frame", "frame type must be message, typing or ping"
                        )
                elif frame.type == WSMsgType.BINARY:
                    await self._send_error(ws, "binary_frame", "send JSON text frames")
                elif frame.type == WSMsgType.ERROR:
                    log.info("web chat socket closed on a protocol error: %s", ws.exception())
        finally:
            sockets.discard(ws)
            if not sockets:
                self._sockets.pop(visitor.id, None)
        return ws

    async def _send_error(
        self, ws: web.WebSocketResponse, error: str, detail: str, client_id: str | None = None
    ) -> None:
        frame: dict[str, Any] = {"type": "error", "error": error, "detail": detail}
        if client_id is not None:
            frame["client_id"] = client_id
        with contextlib.suppress(ConnectionResetError):
            await ws.send_json(frame)

    async def _on_message(self, visitor: Visitor, ws: web.WebSocketResponse, data: dict[str, Any]) -> None:
        client_id, text = data.get("client_id"), data.get("text")
        if not isinstance(client_id, str) or not 0 < len(client_id) <= 100:
            await self._send_error(ws, "invalid_client_id", "client_id must be a string of 1-100 characters")
            return
        if not isinstance(text, str) or not text.strip():
            await self._send_error(ws, "empty_message", "text must be a non-empty string", client_id)
            return
        if len(text) > self.max_body_len:
            await self._send_error(
                ws, "message_too_long", f"messages are limited to {self.max_body_len} characters", client_id
            )
            return
        attributes: dict[str, Any] = {}
        if visitor.email:
            attributes["email"] = visitor.email
        if visitor.verified:
            attributes["verified"] = True
        msg = InboundMessage(
            channel=self.name,
            channel_kind=self.kind,
            external_id=f"{visitor.id}:{client_id}",
            identity_kind=IdentityKind.WEBCHAT,
            sender=visitor.id,
            sender_name=visitor.name,
            text=text,
            contact_attributes=attributes,
        )
        assert self.host is not None
        try:
            result = await self.host.ingest(msg)
        except IngestRefused as exc:  # never storable: tell the visitor why
            await self._send_error(ws, "refused", str(exc), client_id)
            return
        except Exception:
            log.exception("web chat ingest failed")
            await self._send_error(
                ws, "unavailable", "the message was not saved; it will be retried", client_id
            )
            return
        await ws.send_json({"type": "ack", "client_id": client_id, "message_id": result.message_id})
        if not result.duplicate:
            echo = {
                "type": "message",
                "message_id": result.message_id,
                "direction": Direction.IN.value,
                "text": text,
                "author": visitor.name or "",
                "at": msg.received_at.isoformat(),
            }
            await self._push(visitor.id, echo, skip=ws)

    async def _push(self, visitor_id: str, frame: dict[str, Any], skip: Any = None) -> int:
        delivered = 0
        for sock in list(self._sockets.get(visitor_id, ())):
            if sock is skip or sock.closed:
                continue
            try:
                await sock.send_json(frame)
                delivered += 1
            except (ConnectionResetError, RuntimeError):
                continue
        return delivered

    # -- the channel contract -----------------------------------------------------------------

    async def send(self, msg: OutboundMessage) -> SendResult:
        """Push the reply to the visitor's open sockets. With none open the reply is still 'sent':
        the widget loads it with the history when the visitor comes back."""
        frame = {
            "type": "message",
            "message_id": msg.message_id,
            "direction": Direction.OUT.value,
            "text": msg.text,
            "author": msg.author_name or "",
            "at": msg.created_at.isoformat(),
        }
        delivered = await self._push(msg.recipient, frame)
        return SendResult(external_id=None, delivered=delivered > 0)

    async def send_typing(self, recipient: str) -> None:
        await self._push(recipient, {"type": "typing"})

    async def stop(self) -> None:
        sockets = [s for group in self._sockets.values() for s in group]
        await asyncio.gather(
            *(s.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for s in sockets),
            return_exceptions=True,
        )
        self._sockets.clear()
        await super().stop()
