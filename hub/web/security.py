"""Request authentication, the cookie Origin check and JSON errors.

Browsers authenticate with an HttpOnly, SameSite=Strict cookie; API clients with
``Authorization: Bearer``. A cookie-authenticated request that changes state (or opens a websocket)
must carry an Origin naming this hub, which stops cross-site request forgery even in browsers
that ignore SameSite.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from hub.access import Principal
from hub.errors import UserError
from hub.model import Refused

log = logging.getLogger(__name__)

COOKIE = "hub_session"
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
TOKEN: web.RequestKey[str] = web.RequestKey("token", str)
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, error: str, detail: str = "") -> web.Response:
    return web.json_response({"error": error, "detail": detail}, status=status)


def _same_origin(request: web.Request, public_url: str) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return False
    allowed = {f"{request.scheme}://{request.host}"}
    if public_url:
        allowed.add(public_url.rstrip("/"))
    return origin.rstrip("/") in allowed


def bearer_token(request: web.Request) -> tuple[str, bool]:
    """The session token and whether it came from the cookie."""
    header = request.headers.get("Authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip(), False
    if request.path == "/api/live" and request.query.get("token"):
        return request.query["token"], False  # browsers cannot set headers on a websocket
    return request.cookies.get(COOKIE, ""), True


async def authenticate(
    request: web.Request, authenticate_token: Callable[[str], Awaitable[Principal | None]], public_url: str
) -> Principal:
    token, from_cookie = bearer_token(request)
    if not token:
        raise UserError("unauthenticated", "log in first: POST /api/session, then send the token", status=401)
    if from_cookie:
        is_ws = request.headers.get("Upgrade", "").lower() == "websocket"
        if (request.method not in SAFE_METHODS or is_ws) and not _same_origin(request, public_url):
            raise UserError(
                "bad_origin", "cookie-authenticated requests must come from the hub's own pages", status=403
            )
    principal = await authenticate_token(token)
    if principal is None:
        raise UserError("unauthenticated", "the session expired or was revoked; log in again", status=401)
    request[PRINCIPAL] = principal
    request[TOKEN] = token
    return principal


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes ``{"error", "detail"}`` with a fitting status; nothing leaks a traceback."""
    try:
        return await handler(request)
    except Refused as exc:  # UserError included
        return json_error(exc.status, exc.error, exc.detail)
    except web.HTTPException as exc:
        if exc.status < 400 or not request.path.startswith(("/api", "/webchat", "/healthz")):
            raise
        reason = exc.reason.lower().replace(" ", "_")
        return json_error(
            exc.status,
            reason,
            exc.text or exc.reason if exc.text != f"{exc.status}: {exc.reason}" else exc.reason,
        )
    except json.JSONDecodeError as exc:
        return json_error(400, "invalid_json", f"the body is not valid JSON: {exc.msg}")
    except UnicodeDecodeError:
        return json_error(400, "invalid_utf8", "the body is not valid UTF-8")


async def json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type not in ("application/json", ""):
        raise UserError("unsupported_media_type", "send application/json", status=415)
    raw = await request.read()
    if not raw:
        raise UserError("invalid_json", "the body must be a JSON object")
    text = raw.decode("utf-8")
    try:
        body = json.loads(text)
    except RecursionError:
        raise UserError("invalid_json", "the body is nested too deeply") from None
    if not isinstance(body, dict):
        raise UserError("invalid_json", "the body must be a JSON object")
    try:
        # JSON can spell unpaired UTF-16 surrogates ("\ud800"). They are not text: no database can
        # store them and argon2 cannot hash them, so they would surface later as a 500.
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(
            "invalid_unicode", "the body contains an unpaired surrogate (\\ud800-\\udfff)"
        ) from None
    return body
