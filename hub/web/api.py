"""REST handlers. Each one authenticates, checks the role, validates, and calls the hub."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from hub.access import Principal
from hub.auth import generate_password
from hub.conversations import MAX_FILENAME_CHARS, MAX_REPLY_ATTACHMENTS, clean_attachments
from hub.errors import UserError
from hub.model import Role
from hub.timeline import ID_RANGE
from hub.web.security import COOKIE, TOKEN, authenticate, json_body

if TYPE_CHECKING:
    from hub.app import Hub

HUB: web.AppKey[Hub] = web.AppKey("hub")


async def principal(request: web.Request, *, min_role: Role = Role.AGENT) -> Principal:
    hub = request.app[HUB]
    who = await authenticate(request, hub.authenticate, hub.config.public_url)
    rank = {Role.AGENT: 0, Role.SUPERVISOR: 1, Role.ADMIN: 2}
    if rank[who.role] < rank[min_role]:
        raise UserError("forbidden", f"this needs the {min_role.value} role", status=403)
    return who


def int_param(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = ID_RANGE.stop
    if value not in ID_RANGE:
        raise UserError("invalid_parameter", f"{name} must be a 64-bit integer")
    return value


def bool_param(request: web.Request, name: str) -> bool:
    """A true/false query flag; absent means false, anything but the two spellings is refused."""
    raw = request.query.get(name, "")
    if raw not in ("", "true", "false"):
        raise UserError("invalid_parameter", f"{name} must be true or false")
    return raw == "true"


def path_id(request: web.Request, name: str = "id") -> int:
    try:
        value = int(request.match_info[name])
    except ValueError:
        value = ID_RANGE.stop
    if value not in ID_RANGE:
        raise UserError("not_found", f"{name} must be a 64-bit integer", status=404)
    return value


async def healthz(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    async with hub.db.read() as s:
        await s.connection()
    return web.json_response({"status": "ok", "database": hub.db.dialect})


async def login(request: web.Request) -> web.Response:
    body = await json_body(request)
    email, password = body.get("email"), body.get("password")
    if not isinstance(email, str) or not isinstance(password, str):
        raise UserError("invalid_credentials", "give email and password as strings", status=422)
    hub = request.app[HUB]
    token, who = await hub.accounts.login(email, password)
    response = web.json_response(
        {"token": token, "agent": {**who.as_json(), **await hub.router.presence_of(who.id)}}
    )
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="Strict",
        secure=request.secure,
        max_age=int(request.app[HUB].config.session_days * 86400),
        path="/",
    )
    return response


async def logout(request: web.Request) -> web.Response:
    await principal(request)
    await request.app[HUB].accounts.logout(request[TOKEN])
    response = web.Response(status=204)
    response.del_cookie(COOKIE, path="/")
    return response


async def me(request: web.Request) -> web.Response:
    who = await principal(request)
    presence = await request.app[HUB].router.presence_of(who.id)
    return web.json_response({"agent": {**who.as_json(), **presence}})


async def list_agents(request: web.Request) -> web.Response:
    who = await principal(request)
    if who.is_supervisor:
        # Supervisors get the routing overview: presence, load by channel, conversations, skills.
        return web.json_response(await request.app[HUB].supervision.agents())
    agents = await request.app[HUB].accounts.list()
    return web.json_response({"agents": [a.as_json() for a in agents]})


async def create_agent(request: web.Request) -> web.Response:
    await principal(request, min_role=Role.ADMIN)
    body = await json_body(request)
    email, name, role = body.get("email"), body.get("name"), body.get("role", "agent")
    password = body.get("password")
    if not isinstance(email, str) or not isinstance(name, str) or not name.strip():
        raise UserError("invalid_agent", "give email and name as strings", status=422)
    if role not in {r.value for r in Role}:
        raise UserError("invalid_role", "role must be agent, supervisor or admin", status=422)
    if password is not None and not isinstance(password, str):
        raise UserError("invalid_password", "password must be a string", status=422)
    chosen = password or generate_password()
    agent = await request.app[HUB].accounts.add(email, name.strip(), Role(role), chosen)
    answer: dict[str, object] = {"agent": agent.as_json()}
    if password is None:
        answer["password"] = chosen
    return web.json_response(answer, status=201)


async def list_conversations(request: web.Request) -> web.Response:
    who = await principal(request)
    result = await request.app[HUB].timeline.list_conversations(
        who,
        status=request.query.get("status", "open") or "open",
        assignee=request.query.get("assignee", "all") or "all",
        channel=request.query.get("channel") or None,
        before=int_param(request, "before"),
        limit=int_param(request, "limit", 50) or 50,
        include_merged=bool_param(request, "include_merged"),
    )
    return web.json_response(result)


async def get_conversation(request: web.Request) -> web.Response:
    who = await principal(request)
    return web.json_response(await request.app[HUB].timeline.conversation(who, path_id(request)))


async def patch_conversation(request: web.Request) -> web.Response:
    who = await principal(request)
    conversation_id = path_id(request)
    body = await json_body(request)
    hub = request.app[HUB]
    await hub.conversations.update(who, conversation_id, body)
    # An agent who handed the conversation to a colleague may no longer read it.
    try:
        summary = await hub.timeline.conversation_summary(who, conversation_id)
    except UserError:
        return web.json_response({"conversation": None})
    return web.json_response({"conversation": summary})


def reply_max_bytes(max_attachment_bytes: int, max_message_chars: int) -> int:
    """The largest reply body: its most attachments, each of the largest size (base64: 4 characters
    per 3 bytes) and filename, and its longest text, every character JSON-escaped (outside the BMP
    two ``\\u`` escapes of four hex digits, 12 bytes); never under the app's 1 MiB. aiohttp answers
    413 beyond it."""
    per_file = 4 * -(-max_attachment_bytes // 3) + 12 * MAX_FILENAME_CHARS + 512
    return max(1024 * 1024, MAX_REPLY_ATTACHMENTS * per_file + 12 * max_message_chars + 4096)


async def post_message(request: web.Request) -> web.Response:
    who = await principal(request)
    conversation_id = path_id(request)
    hub = request.app[HUB]
    # Only this route, and only once the agent is known, may send a body beyond the app's 1 MiB:
    # an anonymous client cannot make the hub buffer hundreds of megabytes.
    request = request.clone(
        client_max_size=reply_max_bytes(hub.config.max_attachment_bytes, hub.config.max_message_chars)
    )
    body = await json_body(request)
    attachments = clean_attachments(body.get("attachments"), hub.config.max_attachment_bytes)
    result = await hub.conversations.reply(
        who, conversation_id, body.get("text"), attachments, store=hub.attachments
    )
    return web.json_response(result, status=202)


async def post_note(request: web.Request) -> web.Response:
    who = await principal(request)
    body = await json_body(request)
    result = await request.app[HUB].conversations.note(who, path_id(request), body.get("text"))
    return web.json_response(result, status=201)


async def split_conversation(request: web.Request) -> web.Response:
    who = await principal(request)
    body = await json_body(request)
    hub = request.app[HUB]
    new_id = await hub.conversations.split(who, path_id(request), body)
    return web.json_response(
        {"conversation": await hub.timeline.conversation_summary(who, new_id)}, status=201
    )


async def merge_conversation(request: web.Request) -> web.Response:
    who = await principal(request)
    body = await json_body(request)
    hub = request.app[HUB]
    target_id = await hub.conversations.merge(who, path_id(request), body)
    return web.json_response({"conversation": await hub.timeline.conversation_summary(who, target_id)})


async def get_contact(request: web.Request) -> web.Response:
    who = await principal(request)
    return web.json_response(await request.app[HUB].timeline.contact(who, path_id(request)))


async def contact_timeline(request: web.Request) -> web.Response:
    who = await principal(request)
    result = await request.app[HUB].timeline.contact_timeline(
        who,
        path_id(request),
        before=int_param(request, "before"),
        limit=int_param(request, "limit", 50) or 50,
    )
    return web.json_response(result)


async def list_events(request: web.Request) -> web.Response:
    who = await principal(request)
    result = await request.app[HUB].timeline.events(
        who, after=int_param(request, "after", 0) or 0, limit=int_param(request, "limit", 100) or 100
    )
    return web.json_response(result)


async def get_attachment(request: web.Request) -> web.StreamResponse:
    who = await principal(request)
    hub = request.app[HUB]
    row = await hub.timeline.attachment(who, path_id(request))
    return web.FileResponse(
        hub.attachments.path_for(row.sha256),
        headers={
            "Content-Type": row.content_type,
            # Never rendered inline: an attachment is customer content, possibly hostile HTML.
            "Content-Disposition": f'attachment; filename="{row.filename.replace(chr(34), "")}"',
            "X-Content-Type-Options": "nosniff",
        },
    )


def routes() -> list[web.RouteDef]:
    return [
        web.get("/healthz", healthz),
        web.post("/api/session", login),
        web.delete("/api/session", logout),
        web.get("/api/me", me),
        web.get("/api/agents", list_agents),
        web.post("/api/agents", create_agent),
        web.get("/api/conversations", list_conversations),
        web.get("/api/conversations/{id}", get_conversation),
        web.patch("/api/conversations/{id}", patch_conversation),
        web.post("/api/conversations/{id}/messages", post_message),
        web.post("/api/conversations/{id}/notes", post_note),
        web.post("/api/conversations/{id}/split", split_conversation),
        web.post("/api/conversations/{id}/merge", merge_conversation),
        web.get("/api/contacts/{id}", get_contact),
        web.get("/api/contacts/{id}/timeline", contact_timeline),
        web.get("/api/events", list_events),
        web.get("/api/attachments/{id}", get_attachment),
    ]
