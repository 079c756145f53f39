"""Shared fixtures: databases (SQLite always, PostgreSQL when one can be had), a running hub with
its web app on a real socket, and agents with sessions."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession
from aiohttp.test_utils import TestServer
from sqlalchemy import text

from hub.app import Hub
from hub.config import ChannelConfig, HubConfig
from hub.model import Role
from hub.web.app import make_app
from storage.engine import Database
from storage.migrate import upgrade
from storage.models import Base
from tests.peers.postgres import PostgresServer, create_database, drop_database, find_postgres, run_in_thread

pytest_plugins = ["tests.peers.imap"]  # dovecot, pymap, imap_server
TABLES = ", ".join(t.name for t in reversed(Base.metadata.sorted_tables))


@pytest.fixture(scope="session")
def postgres() -> Iterator[tuple[PostgresServer | None, str]]:
    server, reason = find_postgres()
    yield server, reason
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres: tuple[PostgresServer | None, str]) -> Iterator[str | None]:
    """A migrated database of our own on the PostgreSQL server, for the whole session."""
    server, _ = postgres
    if server is None:
        yield None
        return
    name = f"hub_test_{os.getpid()}"
    url = run_in_thread(create_database(server.admin_url, name))

    async def migrate() -> None:
        db = Database(url)
        await upgrade(db)
        await db.dispose()

    run_in_thread(migrate())
    yield url
    run_in_thread(drop_database(server.admin_url, name))


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """Every storage, ingest and outbox test runs once per database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
        return
    url = request.getfixturevalue("postgres_url")
    if url is None:
        pytest.skip(f"PostgreSQL: {request.getfixturevalue('postgres')[1]}")
    db = Database(url)
    async with db.writer.begin() as conn:
        await conn.execute(text(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE"))
    await db.dispose()
    yield url


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    db = Database(db_url)
    await upgrade(db)
    yield db
    await db.dispose()


def hub_config(tmp_path: Path, db_url: str, **overrides: Any) -> HubConfig:
    cfg = HubConfig(
        data_dir=tmp_path / "var",
        database_url=db_url,
        outbox_base_delay=0.05,
        outbox_max_delay=0.5,
        outbox_poll_interval=0.05,
        channels=[ChannelConfig("webchat", "webchat", {"identity_secret": "site-identity-secret"})],
        # Tests of the spine take conversations by hand, so an agent opening the inbox does not get
        # them assigned under the test's feet; routing tests turn the router on.
        routing_enabled=False,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


@pytest.fixture
async def hub(tmp_path: Path, db_url: str) -> AsyncIterator[Hub]:
    async with Hub(hub_config(tmp_path, db_url)) as running:
        yield running


@dataclass
class Live:
    """A hub serving HTTP on a real loopback socket."""

    hub: Hub
    server: TestServer
    http: ClientSession

    @property
    def base(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def ws_base(self) -> str:
        return self.base.replace("http://", "ws://", 1)


@pytest.fixture
async def live(hub: Hub) -> AsyncIterator[Live]:
    server = TestServer(make_app(hub), host="127.0.0.1")
    await server.start_server()
    async with ClientSession() as http:
        yield Live(hub, server, http)
    await server.close()


@dataclass
class AgentLogin:
    id: int
    email: str
    name: str
    role: Role
    password: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


MakeAgent = Callable[..., Awaitable[AgentLogin]]


@pytest.fixture
def make_agent(hub: Hub) -> MakeAgent:
    counter = iter(range(1, 10_000))

    async def make(role: Role = Role.AGENT, name: str | None = None) -> AgentLogin:
        n = next(counter)
        email = f"{role.value}{n}@example.com"
        password = f"password-{n}-long"
        who = await hub.accounts.add(email, name or f"{role.value.title()} {n}", role, password)
        token, _ = await hub.accounts.login(email, password)
        return AgentLogin(who.id, who.email, who.name, role, password, token)

    return make
