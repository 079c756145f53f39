"""The OpenAPI 3.1 description served at /api/openapi.json. A test checks it against the routes."""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
PUBLIC: list[dict[str, list[str]]] = []


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Bad input",
        401: "Not logged in",
        403: "Forbidden",
        404: "Not found",
        409: "Conflict",
        413: "Too large",
        415: "Not JSON",
        422: "Invalid field",
    }
    return {str(c): _json(ERROR, text[c]) for c in codes}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    public: bool = False,
    body: dict[str, Any] | None = None,
    params: list[dict[str, Any]] | None = None,
    tag: str = "inbox",
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": [tag], "responses": responses}
    if public:
        op["security"] = PUBLIC
    if body is not None:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        op["parameters"] = params
    return op


def _q(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


ID_PATH = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
REF = {
    name: {"$ref": f"#/components/schemas/{name}"}
    for name in ("Agent", "Conversation", "Message", "Contact", "Event")
}


def build_openapi() -> dict[str, Any]:
    conversation_with_messages = {
        "type": "object",
        "properties": {
            "conversation": REF["Conversation"],
            "messages": {"type": "array", "items": REF["Message"]},
        },
    }
    text_body = {
        "type": "object",
        "required": ["text"],
        "properties": {"text": {"type": "string", "minLength": 1}},
    }
    reply_body = {
        "type": "object",
        "description": "text, or at least one attachment, or both",
        "properties": {
            "text": {"type": "string", "description": "May be empty when attachments are given"},
            "attachments": {
                "type": "array",
                "maxItems": 10,
                "items": {
                    "type": "object",
                    "required": ["filename", "data"],
                    "additionalProperties": False,
                    "properties": {
                        "filename": {
                            "type": "string",
                            "description": "Reduced to its last path component without control "
                            "characters, at most 200 characters",
                        },
                        "content_type": {
                            "type": "string",
                            "pattern": "^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*$",
                            "default": "application/octet-stream",
                        },
                        "data": {
                            "type": "string",
                            "contentEncoding": "base64",
                            "description": "The file's bytes, base64 (RFC 4648); at most "
                            "limits.max_attachment_bytes decoded (413 beyond)",
                        },
                    },
                },
            },
        },
        "anyOf": [{"required": ["text"]}, {"required": ["attachments"]}],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Omnichannel hub API",
            "version": "1.0.0",
            "description": "Every channel behind one inbox. Authenticate with POST /api/session and send the "
            "token as `Authorization: Bearer <token>`. Errors are JSON: {error, detail}.",
        },
        "security": [{"bearerAuth": []}],
        "paths": {
            "/healthz": {
                "get": _op(
                    "Liveness and database check", {"200": _json({"type": "object"})}, public=True, tag="ops"
                )
            },
            "/api/openapi.json": {
                "get": _op("This document", {"200": _json({"type": "object"})}, public=True, tag="ops")
            },
            "/api/session": {
                "post": _op(
                    "Log in; returns a bearer token and sets the session cookie",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"token": {"type": "string"}, "agent": REF["Agent"]},
                            }
                        ),
                        **_errors(400, 401, 422),
                    },
                    public=True,
                    body={
                        "type": "object",
                        "required": ["email", "password"],
                        "properties": {"email": {"type": "string"}, "password": {"type": "string"}},
                    },
                    tag="auth",
                ),
                "delete": _op(
                    "Log out (revokes the token)",
                    {"204": {"description": "Logged out"}, **_errors(401)},
                    tag="auth",
                ),
            },
            "/api/me": {
                "get": _op(
                    "The logged-in agent",
                    {"200": _json({"type": "object", "properties": {"agent": REF["Agent"]}}), **_errors(401)},
                    tag="auth",
                )
            },
            "/api/agents": {
                "get": _op(
                    "Active agents; for supervisors and admins each with the routing overview "
                    "(presence, load by channel, conversations, skills; the AgentOverview schema)",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "agents": {
                                        "type": "array",
                                        "items": {
                                            "anyOf": [
                                                REF["Agent"],
                                                {"$ref": "#/components/schemas/AgentOverview"},
                                            ]
                                        },
                                    }
                                },
                            }
                        ),
                        **_errors(401),
                    },
                    tag="agents",
                ),
                "post": _op(
                    "Create an agent (admin); answers the generated password when none is given",
                    {
                        "201": _json(
                            {
                                "type": "object",
                                "properties": {"agent": REF["Agent"], "password": {"type": "string"}},
                            }
                        ),
                        **_errors(400, 401, 403, 409, 422),
                    },
                    body={
                        "type": "object",
                        "required": ["email", "name"],
                        "properties": {
                            "email": {"type": "string"},
                            "name": {"type": "string"},
                            "role": {"enum": ["agent", "supervisor", "admin"]},
                            "password": {"type": "string"},
                        },
                    },
                    tag="agents",
                ),
            },
            "/api/conversations": {
                "get": _op(
                    "Conversations the caller may see, newest activity first, keyset-paged",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "conversations": {"type": "array", "items": REF["Conversation"]},
                                    "next_before": {"type": ["integer", "null"]},
                                },
                            }
                        ),
                        **_errors(400, 401),
                    },
                    params=[
                        _q(
                            "status",
                            {"enum": ["open", "pending", "snoozed", "resolved", "all"], "default": "open"},
                            "Conversation status",
                        ),
                        _q("assignee", {"type": "string", "default": "all"}, "me, none, all or an agent id"),
                        _q("channel", {"type": "string"}, "Channel instance name"),
                        _q("before", {"type": "integer"}, "next_before of the previous page"),
                        _q("limit", {"type": "integer", "maximum": 200, "default": 50}, "Page size"),
                        _q(
                            "include_merged",
                            {"type": "boolean", "default": False},
                            "Also list conversations merged into another (hidden by default)",
                        ),
                    ],
                )
            },
            "/api/conversations/{id}": {
                "parameters": [ID_PATH],
                "get": _op(
                    "A conversation with all its messages and notes, oldest first",
                    {"200": _json(conversation_with_messages), **_errors(401, 404)},
                ),
                "patch": _op(
                    "Change status, assignee or priority",
                    {
                        "200": _json({"type": "object", "properties": {"conversation": REF["Conversation"]}}),
                        **_errors(400, 401, 403, 404, 409, 422),
                    },
                    body={
                        "type": "object",
                        "properties": {
                            "status": {"enum": ["open", "pending", "snoozed", "resolved"]},
                            "assignee_id": {"type": ["integer", "null"]},
                            "priority": {"type": "integer", "minimum": 0, "maximum": 4},
                        },
                    },
                ),
            },
            "/api/conversations/{id}/messages": {
                "parameters": [ID_PATH],
                "post": _op(
                    "Reply on the conversation's channel, with attachments; queued in the durable outbox",
                    {
                        "202": _json({"type": "object", "properties": {"message": REF["Message"]}}),
                        **_errors(400, 401, 404, 413, 415, 422),
                    },
                    body=reply_body,
                ),
            },
            "/api/conversations/{id}/notes": {
                "parameters": [ID_PATH],
                "post": _op(
                    "Add a private note (never shown to the customer)",
                    {
                        "201": _json({"type": "object", "properties": {"message": REF["Message"]}}),
                        **_errors(400, 401, 404, 413),
                    },
                    body=text_body,
                ),
            },
            "/api/conversations/{id}/split": {
                "parameters": [ID_PATH],
                "post": _op(
                    "Split one message off into a new open conversation of the same contact and "
                    "channel (agents: conversations they may see). 409 only_message when it is the "
                    "conversation's only message; 422 when it is a note or not in this conversation",
                    {
                        "201": _json(
                            {"type": "object", "properties": {"conversation": REF["Conversation"]}},
                            "The new conversation",
                        ),
                        **_errors(400, 401, 404, 409, 415, 422),
                    },
                    body={
                        "type": "object",
                        "required": ["message_id"],
                        "properties": {
                            "message_id": {
                                "type": "integer",
                                "description": "An inbound or outbound message",
                            },
                            "subject": {
                                "type": "string",
                                "minLength": 1,
                                "maxLength": 500,
                                "description": "Default: the original conversation's subject",
                            },
                        },
                        "additionalProperties": False,
                    },
                ),
            },
            "/api/conversations/{id}/merge": {
                "parameters": [ID_PATH],
                "post": _op(
                    "Merge this conversation into another: its messages move there, it is resolved "
                    "(its assignee's capacity is given back) and keeps merged_into_id. Both must be "
                    "visible to the caller. 409 already_merged names where a merged one went",
                    {
                        "200": _json(
                            {"type": "object", "properties": {"conversation": REF["Conversation"]}},
                            "The target conversation",
                        ),
                        **_errors(400, 401, 404, 409, 415, 422),
                    },
                    body={
                        "type": "object",
                        "required": ["into"],
                        "properties": {"into": {"type": "integer", "description": "The target conversation"}},
                        "additionalProperties": False,
                    },
                ),
            },
            "/api/contacts/{id}": {
                "parameters": [ID_PATH],
                "get": _op(
                    "A contact, its identities and conversations",
                    {
                        "200": _json({"type": "object", "properties": {"contact": REF["Contact"]}}),
                        **_errors(401, 404),
                    },
                    tag="contacts",
                ),
            },
            "/api/contacts/{id}/timeline": {
                "parameters": [ID_PATH],
                "get": _op(
                    "Every message of the contact on every channel, newest first, keyset-paged",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "messages": {"type": "array", "items": REF["Message"]},
                                    "next_before": {"type": ["integer", "null"]},
                                },
                            }
                        ),
                        **_errors(400, 401, 404),
                    },
                    params=[
                        _q("before", {"type": "integer"}, "Message id: return older ones"),
                        _q("limit", {"type": "integer", "maximum": 200, "default": 50}, "Page size"),
                    ],
                    tag="contacts",
                ),
            },
            "/api/events": {
                "get": _op(
                    "The event record, oldest first (supervisors and admins)",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {
                                    "events": {"type": "array", "items": REF["Event"]},
                                    "next_after": {"type": "integer"},
                                },
                            }
                        ),
                        **_errors(400, 401, 403),
                    },
                    params=[
                        _q("after", {"type": "integer", "default": 0}, "Return events with a larger id"),
                        _q("limit", {"type": "integer", "maximum": 1000, "default": 100}, "Page size"),
                    ],
                    tag="events",
                )
            },
            "/api/attachments/{id}": {
                "parameters": [ID_PATH],
                "get": _op(
                    "Download an attachment",
                    {
                        "200": {"description": "The file", "content": {"application/octet-stream": {}}},
                        **_errors(401, 404),
                    },
                ),
            },
            "/api/live": {
                "get": _op(
                    "Websocket of the events the caller may see. "
                    "Server frames: hello, event, typing, resync, pong. "
                    "Client frames: {type: typing, conversation_id}, {type: ping}.",
                    {"101": {"description": "Switching to the websocket protocol"}, **_errors(401, 403)},
                    tag="live",
                )
            },
            "/webchat/session": {
                "post": _op(
                    "Start or resume a web-chat visitor session; returns a signed visitor token",
                    {
                        "200": _json(
                            {
                                "type": "object",
                                "properties": {"token": {"type": "string"}, "visitor_id": {"type": "string"}},
                            }
                        ),
                        **_errors(400, 403, 422),
                    },
                    public=True,
                    body={
                        "type": "object",
                        "properties": {
                            "name": {"type": "string"},
                            "email": {"type": "string"},
                            "user_id": {"type": "string"},
                            "user_hash": {
                                "type": "string",
                                "description": "hex HMAC-SHA256(identity secret, user_id)",
                            },
                        },
                    },
                    tag="webchat",
                )
            },
            "/webchat/ws": {
                "get": _op(
                    "Visitor websocket (?token=). Visitor frames: message {client_id, text}, typing, ping. "
                    "Server frames: history, ack {client_id, message_id} (after commit), message, typing, "
                    "error.",
                    {"101": {"description": "Switching to the websocket protocol"}, **_errors(401, 403)},
                    public=True,
                    params=[{"name": "token", "in": "query", "required": True, "schema": {"type": "string"}}],
                    tag="webchat",
                )
            },
            **_supervisor_paths(),
            **_routing_paths(),
        },
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error", "detail"],
                    "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
                },
                "Agent": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "email": {"type": "string"},
                        "name": {"type": "string"},
                        "role": {"enum": ["agent", "supervisor", "admin"]},
                    },
                },
                "Conversation": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "contact": {
                            "type": "object",
                            "properties": {"id": {"type": "integer"}, "name": {"type": ["string", "null"]}},
                        },
                        "channel": {"type": "string"},
                        "channel_kind": {"type": "string"},
                        "address": {"type": "string"},
                        "status": {"enum": ["open", "pending", "snoozed", "resolved"]},
                        "assignee_id": {"type": ["integer", "null"]},
                        "assignee": {"type": ["object", "null"]},
                        "priority": {"type": "integer"},
                        "subject": {"type": ["string", "null"]},
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                        "last_message_at": {"type": "string", "format": "date-time"},
                        "resolved_at": {"type": ["string", "null"], "format": "date-time"},
                        "last_message": {"type": ["object", "null"]},
                        "merged_into_id": {
                            "type": ["integer", "null"],
                            "description": "Set when merged into another conversation",
                        },
                    },
                },
                "Message": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "conversation_id": {"type": "integer"},
                        "contact_id": {"type": "integer"},
                        "channel": {"type": "string"},
                        "direction": {"enum": ["in", "out", "note"]},
                        "status": {
                            "enum": ["received", "queued", "sent", "delivered", "read", "failed", "note"]
                        },
                        "text": {"type": "string"},
                        "html": {"type": ["string", "null"]},
                        "author": {"type": "string"},
                        "agent_id": {"type": ["integer", "null"]},
                        "sender": {"type": ["string", "null"]},
                        "external_id": {"type": ["string", "null"]},
                        "created_at": {"type": "string", "format": "date-time"},
                        "error": {"type": ["string", "null"]},
                        "attachments": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Contact": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "name": {"type": ["string", "null"]},
                        "attributes": {"type": "object"},
                        "identities": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "properties": {
                                    "kind": {"enum": ["email", "phone", "jid", "webchat"]},
                                    "value": {"type": "string"},
                                },
                            },
                        },
                        "conversations": {"type": "array", "items": REF["Conversation"]},
                        "created_at": {"type": "string", "format": "date-time"},
                    },
                },
                "Event": {
                    "type": "object",
                    "required": ["id", "type", "at", "data"],
                    "properties": {
                        "id": {"type": "integer"},
                        "type": {"type": "string"},
                        "at": {"type": "string", "format": "date-time"},
                        "conversation_id": {"type": ["integer", "null"]},
                        "contact_id": {"type": ["integer", "null"]},
                        "message_id": {"type": ["integer", "null"]},
                        "agent_id": {"type": ["integer", "null"]},
                        "data": {"type": "object"},
                    },
                },
                **SUPERVISOR_SCHEMAS,
            },
        },
    }


# -- supervisor (hub.web.supervisor, figures from routing.stats) -----------------------------------

_INT = {"type": "integer"}
_SECONDS = {"type": "number"}
_SECONDS_OR_NULL = {"type": ["number", "null"]}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_RATIO_OR_NULL = {"type": ["number", "null"], "minimum": 0, "maximum": 1}

SUPERVISOR_SCHEMAS: dict[str, Any] = {
    "QueueStats": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "priority": _INT,
            "sla_seconds": _SECONDS,
            "waiting": {**_INT, "description": "Waiting now, offered ones included"},
            "waiting_by_priority": {
                "type": "object",
                "additionalProperties": _INT,
                "description": "Conversation priority (0-4, as a string) -> waiting",
            },
            "offered": {**_INT, "description": "Waiting ones offered to an agent now"},
            "oldest_enqueued_at": _TIME_OR_NULL,
            "longest_wait_seconds": _SECONDS,
            "sla_at_risk": {**_INT, "description": "Waiting longer than 80% of the target, not past it"},
            "sla_breached_now": {**_INT, "description": "Waiting longer than the target"},
            "eligible_agents": {
                **_INT,
                "description": "Active agents with the required skills and a channel kind in common",
            },
            "available_agents": {
                **_INT,
                "description": "Eligible, online, with room for the cheapest channel both take",
            },
            "service_level": {
                "type": "object",
                "description": "See service_level_rule; the counts are today's",
                "properties": {
                    "rolling_15m": _RATIO_OR_NULL,
                    "today": _RATIO_OR_NULL,
                    "answered": _INT,
                    "answered_within_sla": _INT,
                    "abandoned": {**_INT, "description": "Abandons that count (after the short threshold)"},
                },
            },
            "average_speed_of_answer_seconds": _SECONDS_OR_NULL,
            "wait_p50_seconds": _SECONDS_OR_NULL,
            "wait_p90_seconds": _SECONDS_OR_NULL,
            "answered_today": _INT,
            "abandoned_today": {**_INT, "description": "Every abandon today, short ones included"},
        },
    },
    "AgentOverview": {
        "type": "object",
        "properties": {
            "id": _INT,
            "name": {"type": "string"},
            "email": {"type": "string"},
            "role": {"enum": ["agent", "supervisor", "admin"]},
            "status": {"enum": ["online", "away", "offline"], "description": "What the agent chose"},
            "presence": {
                "enum": ["online", "away", "offline"],
                "description": "Effective now: the status while an inbox sends heartbeats, else offline",
            },
            "connected": {"type": "boolean"},
            "capacity": _INT,
            "load": _INT,
            "load_by_channel": {"type": "object", "additionalProperties": _INT},
            "conversations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": _INT,
                        "channel_kind": {"type": "string"},
                        "status": {"enum": ["open", "pending", "snoozed"]},
                        "cost": _INT,
                        "assigned_at": _TIME_OR_NULL,
                        "offered": {"type": "boolean"},
                        "offer_expires_at": _TIME_OR_NULL,
                    },
                },
            },
            "active_conversations": _INT,
            "offers": _INT,
            "skills": {"type": "object", "additionalProperties": _INT},
            "channel_kinds": {"type": "array", "items": {"type": "string"}},
            "last_assigned_at": _TIME_OR_NULL,
            "seconds_since_last_assignment": _SECONDS_OR_NULL,
        },
    },
}


def _supervisor_paths() -> dict[str, Any]:
    queue_stats = {"$ref": "#/components/schemas/QueueStats"}
    agent_overview = {"$ref": "#/components/schemas/AgentOverview"}
    return {
        "/api/queues": {
            "get": _op(
                "Queue statistics now: waiting, SLA risk, agents, service level (supervisors, admins)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "queues": {"type": "array", "items": queue_stats},
                                "unqueued": {
                                    "type": "object",
                                    "description": "Waiting conversations whose queue is not configured",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "waiting": _INT,
                                        "oldest_enqueued_at": _TIME_OR_NULL,
                                        "longest_wait_seconds": _SECONDS,
                                    },
                                },
                                "service_level_rule": {"type": "string"},
                            },
                        }
                    ),
                    **_errors(401, 403),
                },
                tag="supervisor",
            )
        },
        "/api/agents/overview": {
            "get": _op(
                "Every active agent's presence, load and conversations (supervisors, admins)",
                {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"agents": {"type": "array", "items": agent_overview}},
                        }
                    ),
                    **_errors(401, 403),
                },
                tag="supervisor",
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics, text exposition format 0.0.4 (supervisors, admins)",
                {
                    "200": {
                        "description": "hub_queue_* and hub_agent* families",
                        "content": {"text/plain; version=0.0.4": {"schema": {"type": "string"}}},
                    },
                    **_errors(401, 403),
                },
                tag="supervisor",
            )
        },
    }


# -- routing (hub.web.routing_api) ------------------------------------------------------------------

_CONVERSATION_OR_NULL = {
    "type": "object",
    "properties": {
        "conversation": {
            "anyOf": [{"$ref": "#/components/schemas/Conversation"}, {"type": "null"}],
            "description": "null when the caller may no longer see it",
        }
    },
}
_VERSION_BODY = {
    "type": "object",
    "properties": {"version": {"type": "integer", "description": "routing_version the offer was made at"}},
}
QUEUE_SPEC: dict[str, Any] = {
    "type": "object",
    "description": "A queue as in config/routing.example.toml",
    "properties": {
        "priority": _INT,
        "sla_seconds": _SECONDS,
        "choice": {"enum": ["longest_idle", "least_occupied", "best_proficiency"]},
        "mode": {"enum": ["direct", "offer"]},
        "offer_timeout_seconds": _SECONDS,
        "ageing_per_minute": _SECONDS,
        "on_agent_away": {"enum": ["keep", "requeue", "requeue_unanswered"]},
        "required_skills": {
            "type": "object",
            "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 5},
        },
        "match": {"type": "object"},
        "steps": {"type": "array", "items": {"type": "object"}},
        "position": {"type": "integer", "description": "match order; the first matching queue wins"},
    },
}


def _routing_paths() -> dict[str, Any]:
    name_path = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "/api/agents/me/status": {
            "put": _op(
                "Choose your status; with an open inbox it makes you available (online) or not",
                {
                    "200": _json({"type": "object", "properties": {"agent": {"type": "object"}}}),
                    **_errors(401, 422),
                },
                body={
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"enum": ["online", "away", "offline"]}},
                },
                tag="routing",
            )
        },
        "/api/agents/{id}": {
            "patch": _op(
                "Set an agent's capacity, skills (1-5) and channel kinds (admin)",
                {
                    "200": _json({"type": "object", "properties": {"agent": {"type": "object"}}}),
                    **_errors(401, 403, 404, 409, 422),
                },
                body={
                    "type": "object",
                    "properties": {
                        "capacity": {"type": "integer", "minimum": 0},
                        "skills": {
                            "type": "object",
                            "additionalProperties": {"type": "integer", "minimum": 1, "maximum": 5},
                        },
                        "channel_kinds": {"type": "array", "items": {"type": "string"}},
                    },
                },
                params=[ID_PATH],
                tag="routing",
            )
        },
        "/api/conversations/{id}/accept": {
            "post": _op(
                "Accept a conversation offered to you; 409 stale_offer when it expired or moved on",
                {"200": _json(_CONVERSATION_OR_NULL), **_errors(401, 404, 409)},
                body=_VERSION_BODY,
                params=[ID_PATH],
                tag="routing",
            )
        },
        "/api/conversations/{id}/decline": {
            "post": _op(
                "Decline a conversation offered to you; it keeps its place in the queue",
                {"200": _json(_CONVERSATION_OR_NULL), **_errors(401, 404, 409)},
                body=_VERSION_BODY,
                params=[ID_PATH],
                tag="routing",
            )
        },
        "/api/conversations/{id}/transfer": {
            "post": _op(
                "Transfer to an agent or a queue (the assignee or a supervisor), through the claim path",
                {"200": _json(_CONVERSATION_OR_NULL), **_errors(401, 403, 404, 409, 422)},
                body={
                    "type": "object",
                    "properties": {"agent_id": {"type": "integer"}, "queue": {"type": "string"}},
                    "description": "exactly one of agent_id or queue",
                },
                params=[ID_PATH],
                tag="routing",
            )
        },
        "/api/queues/{name}": {
            "get": _op(
                "A queue's definition and match position (supervisors, admins)",
                {
                    "200": _json({"type": "object", "properties": {"queue": QUEUE_SPEC}}),
                    **_errors(401, 403, 404),
                },
                params=[name_path],
                tag="routing",
            ),
            "put": _op(
                "Create or replace a queue (admin)",
                {
                    "200": _json({"type": "object", "properties": {"queue": QUEUE_SPEC}}),
                    **_errors(401, 403, 422),
                },
                body=QUEUE_SPEC,
                params=[name_path],
                tag="routing",
            ),
            "delete": _op(
                "Delete a queue (admin); its waiting conversations are matched again",
                {"204": {"description": "Deleted"}, **_errors(401, 403, 404)},
                params=[name_path],
                tag="routing",
            ),
        },
    }
