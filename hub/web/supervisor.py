"""The supervisor's read-only endpoints: queue statistics, the agents' overview, Prometheus metrics.

All three need the supervisor or admin role, ``/metrics`` included: a Prometheus server scrapes it
with a supervisor's bearer token (``authorization: {credentials_file: ...}`` in its scrape config).
The figures come from ``hub.supervision`` (:class:`hub.types.SupervisorView`); the same reports are
pushed on the live socket as ``queues.updated`` and ``agents.updated``.
"""

from __future__ import annotations

from aiohttp import web

from hub.model import Role
from hub.types import SupervisorView
from hub.web.api import HUB, principal

# Prometheus' text exposition format, version 0.0.4.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _view(request: web.Request) -> SupervisorView:
    view: SupervisorView = request.app[HUB].supervision
    return view


async def queues(request: web.Request) -> web.Response:
    await principal(request, min_role=Role.SUPERVISOR)
    return web.json_response(await _view(request).queues())


async def agents(request: web.Request) -> web.Response:
    await principal(request, min_role=Role.SUPERVISOR)
    return web.json_response(await _view(request).agents())


async def metrics(request: web.Request) -> web.Response:
    await principal(request, min_role=Role.SUPERVISOR)
    text = await _view(request).metrics()
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def routes() -> list[web.RouteDef]:
    # GET /api/agents (every agent's name, for assigning) stays in hub.web.api; the supervisor's
    # overview with presence, load and conversations is a resource of its own.
    return [
        web.get("/api/queues", queues),
        web.get("/api/agents/overview", agents),
        web.get("/metrics", metrics),
    ]
