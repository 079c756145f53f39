"""The supervisor's endpoints: GET /api/queues, GET /api/agents/overview and GET /metrics need the
supervisor or admin role; their answers carry exactly the documented fields; /metrics is valid
Prometheus text. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any, ClassVar

import pytest

from channels.base import BaseChannel
from hub.model import OutboundMessage, Role, SendResult, new_event
from tests.clients import call, customer_says, event_of, next_frame, open_live
from tests.conftest import Live, MakeAgent
from tests.prometheus import parse_exposition

JSON_ENDPOINTS = ("/api/queues", "/api/agents/overview")
ENDPOINTS = (*JSON_ENDPOINTS, "/metrics")


@pytest.fixture
async def supervised(live: Live) -> Live:
    await live.hub.queues.put("billing", {"sla_seconds": 30, "required_skills": {"billing": 2}})
    return live


async def get(live: Live, path: str, headers: dict[str, str] | None = None) -> tuple[int, str, str]:
    async with live.http.get(f"{live.base}{path}", headers=headers) as r:
        return r.status, r.headers.get("Content-Type", ""), await r.text()


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_refused_without_a_valid_token(supervised: Live, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer not-a-session-token"}):
        status, answer = await call(supervised, "GET", path, headers)
        assert (status, answer["error"]) == (401, "unauthenticated"), (path, headers)


@pytest.mark.parametrize("path", ENDPOINTS)
async def test_refused_to_an_agent(supervised: Live, make_agent: MakeAgent, path: str) -> None:
    agent = await make_agent(Role.AGENT)
    status, answer = await call(supervised, "GET", path, agent.headers)
    assert (status, answer["error"]) == (403, "forbidden")


@pytest.mark.parametrize("role", [Role.SUPERVISOR, Role.ADMIN])
async def test_supervisors_and_admins_read_the_queues(
    supervised: Live, make_agent: MakeAgent, role: Role
) -> None:
    who = await make_agent(role)
    await customer_says(supervised.hub, "v-waiting")
    status, answer = await call(supervised, "GET", "/api/queues", who.headers)
    assert status == 200
    assert "billing" in [q["name"] for q in answer["queues"]]
    assert answer["service_level_rule"]
    status, answer = await call(supervised, "GET", "/api/agents/overview", who.headers)
    assert status == 200
    mine = next(a for a in answer["agents"] if a["id"] == who.id)
    assert mine["role"] == role.value and mine["email"] == who.email


async def test_answers_carry_exactly_the_documented_fields(supervised: Live, make_agent: MakeAgent) -> None:
    who = await make_agent(Role.SUPERVISOR)
    _, doc = await call(supervised, "GET", "/api/openapi.json")
    schemas = doc["components"]["schemas"]

    def documented(schema: dict[str, Any]) -> set[str]:
        return set(schema["properties"])

    _, queues = await call(supervised, "GET", "/api/queues", who.headers)
    queue_doc = doc["paths"]["/api/queues"]["get"]["responses"]["200"]["content"]["application/json"][
        "schema"
    ]
    assert set(queues) == documented(queue_doc)
    assert set(queues["unqueued"]) == documented(queue_doc["properties"]["unqueued"])
    for queue in queues["queues"]:
        assert set(queue) == documented(schemas["QueueStats"])
        assert set(queue["service_level"]) == documented(schemas["QueueStats"]["properties"]["service_level"])
    _, agents = await call(supervised, "GET", "/api/agents/overview", who.headers)
    assert agents["agents"]
    for agent in agents["agents"]:
        assert set(agent) == documented(schemas["AgentOverview"])


async def test_metrics_are_prometheus_text(supervised: Live, make_agent: MakeAgent) -> None:
    admin = await make_agent(Role.ADMIN)
    status, content_type, text = await get(supervised, "/metrics", admin.headers)
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    families = parse_exposition(text)
    assert {
        "hub_queue_waiting",
        "hub_queue_longest_wait_seconds",
        "hub_queue_available_agents",
        "hub_queue_service_level_ratio",
        "hub_queue_assignments_total",
        "hub_queue_abandoned_total",
        "hub_queue_sla_breaches_total",
        "hub_agents",
        "hub_agent_load_ratio",
    } <= set(families)
    assert families["hub_queue_waiting"]["samples"][(("queue", "billing"),)] >= 0
    assert families["hub_agent_load_ratio"]["samples"][(("agent", str(admin.id)),)] == 0
    assert sum(families["hub_agents"]["samples"].values()) == 1


async def test_live_socket_carries_the_reports_to_supervisors_only(
    supervised: Live, make_agent: MakeAgent
) -> None:
    supervisor, agent = await make_agent(Role.SUPERVISOR), await make_agent(Role.AGENT)
    watching, working = (
        await open_live(supervised, supervisor.headers),
        await open_live(supervised, agent.headers),
    )
    hub = supervised.hub
    # The hub runs this itself once wired; a second loop here changes nothing for the test.
    task = asyncio.get_running_loop().create_task(hub.supervision.run(hub.bus.publish, interval=0.05))
    try:
        frame = await next_frame(watching, event_of("queues.updated"))
        assert "billing" in [q["name"] for q in frame["event"]["data"]["queues"]]
        frame = await next_frame(watching, event_of("agents.updated"))
        assert agent.id in [a["id"] for a in frame["event"]["data"]["agents"]]
        # Something the agent does see, published after the reports: it comes first.
        hub.bus.publish([new_event("test.marker", agent_id=agent.id)])
        watched = {"queues.updated", "agents.updated", "test.marker"}
        frame = await next_frame(
            working, lambda f: f.get("type") == "event" and f["event"]["type"] in watched
        )
        assert frame["event"]["type"] == "test.marker"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class _AuditingChannel(BaseChannel):
    """A channel reporting gauges, as the email channel reports its mailboxes' count audits."""

    kind: ClassVar[str] = "auditing"
    metric_help: ClassVar[dict[str, str]] = {"hub_test_audit_missing": 'Missing "now".'}

    async def send(self, msg: OutboundMessage) -> SendResult:
        raise AssertionError("not used")

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        return [
            ("hub_test_audit_missing", {"channel": self.name, "mailbox": "a@x/INBOX"}, 2.0),
            ("hub_test_audit_missing", {"channel": self.name, "mailbox": "b@x/INBOX"}, 0.0),
        ]


async def test_metrics_carry_what_channels_report(supervised: Live, make_agent: MakeAgent) -> None:
    supervised.hub.channels["audited"] = _AuditingChannel("audited", {})
    try:
        admin = await make_agent(Role.ADMIN)
        status, _, text = await get(supervised, "/metrics", admin.headers)
    finally:
        del supervised.hub.channels["audited"]
    assert status == 200
    family = parse_exposition(text)["hub_test_audit_missing"]
    assert family["type"] == "gauge" and family["help"] == 'Missing "now".'
    assert family["samples"] == {
        (("channel", "audited"), ("mailbox", "a@x/INBOX")): 2.0,
        (("channel", "audited"), ("mailbox", "b@x/INBOX")): 0.0,
    }
