"""Builds the aiohttp application around a running :class:`hub.app.Hub`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import WSCloseCode, web

from hub.web import api, routing_api, supervisor
from hub.web.live import LIVE_SOCKETS, live
from hub.web.openapi import build_openapi
from hub.web.security import Handler, error_middleware

if TYPE_CHECKING:
    from hub.app import Hub

STATIC = Path(__file__).parent / "static"
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
INBOX_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


async def index(request: web.Request) -> web.StreamResponse:
    return web.FileResponse(
        STATIC / "index.html",
        headers={
            "Content-Type": "text/html; charset=utf-8",
            "Content-Security-Policy": INBOX_CSP,
            "Cache-Control": "no-cache",
            **SECURITY_HEADERS,
        },
    )


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(request.app[OPENAPI])


OPENAPI: web.AppKey[dict[str, object]] = web.AppKey("openapi", dict)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    response = await handler(request)
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response


def make_app(hub: Hub) -> web.Application:
    app = web.Application(middlewares=[security_headers, error_middleware], client_max_size=1024 * 1024)
    app[api.HUB] = hub
    app[LIVE_SOCKETS] = set()
    app[OPENAPI] = build_openapi()
    app.add_routes(api.routes())
    app.add_routes(supervisor.routes())
    app.add_routes(routing_api.routes())
    app.add_routes([web.get("/api/live", live), web.get("/api/openapi.json", openapi), web.get("/", index)])
    app.add_routes(hub.channel_routes())
    app.router.add_static("/static/", STATIC, append_version=False)
    app.cleanup_ctx.append(_close_live_sockets)
    return app


async def _close_live_sockets(app: web.Application) -> AsyncIterator[None]:
    yield
    open_sockets: set[web.WebSocketResponse] = app[LIVE_SOCKETS]
    sockets = list(open_sockets)
    await asyncio.gather(
        *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for ws in sockets),
        return_exceptions=True,
    )
