"""REST handlers for routing: an agent's status, offers, transfers, and (admins) agents' routing
attributes and queue definitions. The router does the work; these check who may ask."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from hub.errors import UserError
from hub.model import Role
from hub.web.api import HUB, path_id, principal
from hub.web.security import json_body


async def set_my_status(request: web.Request) -> web.Response:
    who = await principal(request)
    body = await json_body(request)
    status = body.get("status")
    if not isinstance(status, str):
        raise UserError("invalid_status", "status must be online, away or offline", status=422)
    hub = request.app[HUB]
    presence = await hub.router.choose_status(who.id, status)
    return web.json_response({"agent": {**who.as_json(), "status": status, "presence": presence.value}})


async def configure_agent(request: web.Request) -> web.Response:
    await principal(request, min_role=Role.ADMIN)
    body = await json_body(request)
    agent = await request.app[HUB].router.configure_agent(path_id(request), body)
    return web.json_response({"agent": agent})


def _version(body: dict[str, Any]) -> int | None:
    version = body.get("version")
    if version is not None and type(version) is not int:
        raise UserError(
            "invalid_version", "version must be the integer routing_version of the offer", status=422
        )
    return version


async def _conversation(request: web.Request, conversation_id: int) -> web.Response:
    hub = request.app[HUB]
    try:
        summary = await hub.timeline.conversation_summary(await principal(request), conversation_id)
    except UserError:
        return web.json_response({"conversation": None})  # it went where this agent may not follow
    return web.json_response({"conversation": summary})


async def _answer_offer(request: web.Request, *, accept: bool) -> web.Response:
    who = await principal(request)
    conversation_id = path_id(request)
    body = await json_body(request) if request.can_read_body else {}
    router = request.app[HUB].router
    answer = router.accept if accept else router.decline
    await answer(conversation_id, who.id, _version(body))
    return await _conversation(request, conversation_id)


async def accept_offer(request: web.Request) -> web.Response:
    return await _answer_offer(request, accept=True)


async def decline_offer(request: web.Request) -> web.Response:
    return await _answer_offer(request, accept=False)


async def transfer(request: web.Request) -> web.Response:
    who = await principal(request)
    conversation_id = path_id(request)
    body = await json_body(request)
    hub = request.app[HUB]
    current = await hub.timeline.conversation_summary(who, conversation_id)  # 404 unless visible
    if not who.is_supervisor and current["assignee_id"] != who.id:
        raise UserError("forbidden", "only the assignee or a supervisor can transfer", status=403)
    agent_id, queue = body.get("agent_id"), body.get("queue")
    if agent_id is not None and type(agent_id) is not int:
        raise UserError("invalid_transfer", "agent_id must be an agent id", status=422)
    if queue is not None and not isinstance(queue, str):
        raise UserError("invalid_transfer", "queue must be a queue name", status=422)
    await hub.router.transfer(conversation_id, by=who.id, agent_id=agent_id, queue=queue)
    return await _conversation(request, conversation_id)


async def get_queue(request: web.Request) -> web.Response:
    await principal(request, min_role=Role.SUPERVISOR)
    name = request.match_info["name"]
    hub = request.app[HUB]
    for position, spec in enumerate(await hub.queues.current()):
        if spec.name == name:
            return web.json_response({"queue": {**hub.queues.as_json(spec), "position": position}})
    raise UserError("not_found", f"no queue named {name!r}", status=404)


async def put_queue(request: web.Request) -> web.Response:
    await principal(request, min_role=Role.ADMIN)
    body = await json_body(request)
    position = body.pop("position", None)
    if position is not None and type(position) is not int:
        raise UserError("invalid_queue", "position must be an integer (match order)", status=422)
    hub = request.app[HUB]
    spec = await hub.queues.put(request.match_info["name"], body, position)
    hub.router.wake([spec.name])
    return web.json_response({"queue": hub.queues.as_json(spec)})


async def delete_queue(request: web.Request) -> web.Response:
    await principal(request, min_role=Role.ADMIN)
    name = request.match_info["name"]
    if not await request.app[HUB].queues.delete(name):
        raise UserError("not_found", f"no queue named {name!r}", status=404)
    return web.Response(status=204)


def routes() -> list[web.RouteDef]:
    return [
        web.put("/api/agents/me/status", set_my_status),
        web.patch("/api/agents/{id}", configure_agent),
        web.post("/api/conversations/{id}/accept", accept_offer),
        web.post("/api/conversations/{id}/decline", decline_offer),
        web.post("/api/conversations/{id}/transfer", transfer),
        web.get("/api/queues/{name}", get_queue),
        web.put("/api/queues/{name}", put_queue),
        web.delete("/api/queues/{name}", delete_queue),
    ]
