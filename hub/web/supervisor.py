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
from routing.exposition import Exposition

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
    text = await _view(request).metrics() + _channel_metrics(request)
    return web.Response(body=text.encode(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def _channel_metrics(request: web.Request) -> str:
    """The families channels report (an email mailbox's audit, ...), appended to the router's."""
    families: dict[str, list[tuple[dict[str, str], float | None]]] = {}
    helps: dict[str, str] = {}
    for channel in request.app[HUB].channels.values():
        for name, labels, value in channel.metrics():
            families.setdefault(name, []).append((labels, value))
            helps.setdefault(name, channel.metric_help.get(name, "Reported by a channel."))
    if not families:
        return ""
    out = Exposition()
    for name, samples in families.items():
        out.family(name, "gauge", helps[name], samples)
    return out.text()


def routes() -> list[web.RouteDef]:
    # GET /api/agents (every agent's name, for assigning) stays in hub.web.api; the supervisor's
    # overview with presence, load and conversations is a resource of its own.
    return [
        web.get("/api/queues", queues),
        web.get("/api/agents/overview", agents),
        web.get("/metrics", metrics),
    ]
