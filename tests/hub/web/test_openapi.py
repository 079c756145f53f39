"""/api/openapi.json describes exactly the routes the app serves, with the right security."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from tests.clients import call
from tests.conftest import Live

DOCUMENTED_PREFIXES = ("/api/", "/healthz", "/webchat/", "/metrics")
# CORS preflight is answered for browsers, not an operation an API client calls.
NOT_OPERATIONS = {("OPTIONS", "/webchat/session")}
PUBLIC = {
    ("GET", "/healthz"),
    ("GET", "/api/openapi.json"),
    ("POST", "/api/session"),
    ("POST", "/webchat/session"),
    ("GET", "/webchat/ws"),
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def served_operations(app: web.Application) -> set[tuple[str, str]]:
    operations = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if not path.startswith(DOCUMENTED_PREFIXES):
            continue
        if route.method == "HEAD":  # aiohttp adds HEAD beside every GET
            continue
        operations.add((route.method, path))
    return operations - NOT_OPERATIONS


def documented_operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in doc["paths"].items()
        for method, operation in item.items()
        if method in HTTP_METHODS
    }


async def document(live: Live) -> dict[str, Any]:
    status, doc = await call(live, "GET", "/api/openapi.json")  # public: no token
    assert status == 200
    return dict(doc)


async def test_document_is_openapi_3_with_bearer_security(live: Live) -> None:
    doc = await document(live)
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    assert doc["components"]["securitySchemes"]["bearerAuth"] == {"type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearerAuth": []}]
    for (method, path), operation in documented_operations(doc).items():
        assert operation["responses"], (method, path)
        assert operation.get("summary"), (method, path)


async def test_document_matches_the_routes(live: Live) -> None:
    served = served_operations(live.server.app)
    documented = set(documented_operations(await document(live)))
    assert served, "no routes found: the route walk is broken"
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


async def test_public_operations_declare_no_security_and_others_inherit_bearer(live: Live) -> None:
    for key, operation in documented_operations(await document(live)).items():
        if key in PUBLIC:
            assert operation.get("security") == [], key
        else:
            assert "security" not in operation, f"{key} should inherit the document's bearer security"


async def test_every_reference_resolves_and_path_parameters_are_declared(live: Live) -> None:
    doc = await document(live)

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(doc):
        assert ref.startswith("#/"), ref
        target: Any = doc
        for part in ref[2:].split("/"):
            assert part in target, f"{ref} does not resolve"
            target = target[part]

    for path, item in doc["paths"].items():
        declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        for method, operation in item.items():
            if method in HTTP_METHODS:
                declared_here = declared | {
                    p["name"] for p in operation.get("parameters", []) if p["in"] == "path"
                }
                wanted = {part[1:-1] for part in path.split("/") if part.startswith("{")}
                assert wanted == declared_here, (method, path)


async def test_public_operations_really_are_public(live: Live) -> None:
    """The document's promise, checked against the server: these answer without a token."""
    assert (await call(live, "GET", "/healthz"))[0] == 200
    assert (await call(live, "POST", "/webchat/session", json={}))[0] == 200
