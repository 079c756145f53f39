"""Agents and their sessions: argon2 password hashes, opaque bearer tokens stored as SHA-256."""

from __future__ import annotations

import functools
import hashlib
import secrets
from datetime import timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select

from hub.access import Principal
from hub.errors import UserError
from hub.events import EventBus, EventType, append_events, new_event
from hub.identity import InvalidAddress, normalise_email
from hub.model import Role, utcnow
from storage.engine import Database
from storage.models import Agent, ApiToken

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verifying against this keeps a login for an unknown email as slow as one with a wrong password."""
    return _hasher.hash(secrets.token_urlsafe(16))


def generate_password() -> str:
    return secrets.token_urlsafe(12)


def _token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def principal_of(agent: Agent) -> Principal:
    return Principal(id=agent.id, email=agent.email, name=agent.name, role=Role(agent.role))


class Accounts:
    def __init__(self, db: Database, bus: EventBus, session_ttl: timedelta = timedelta(days=30)) -> None:
        self.db = db
        self.bus = bus
        self.session_ttl = session_ttl

    async def count(self) -> int:
        async with self.db.read() as s:
            return int((await s.execute(select(func.count(Agent.id)))).scalar_one())

    async def add(self, email: str, name: str, role: Role, password: str) -> Principal:
        try:
            email = normalise_email(email)
        except InvalidAddress as exc:
            raise UserError("invalid_email", str(exc)) from None
        if len(password) < 8:
            raise UserError("weak_password", "a password needs at least 8 characters")
        async with self.db.write() as s:
            if (await s.execute(select(Agent.id).where(Agent.email == email))).first():
                raise UserError("agent_exists", f"an agent with email {email} already exists", status=409)
            agent = Agent(
                email=email,
                name=name,
                role=role.value,
                password_hash=_hasher.hash(password),
                active=True,
                created_at=utcnow(),
            )
            s.add(agent)
            await s.flush()
            events = await append_events(
                s, [new_event(EventType.AGENT_CREATED, agent_id=agent.id, role=role.value, name=name)]
            )
        self.bus.publish(events)
        return principal_of(agent)

    async def list(self) -> list[Principal]:
        async with self.db.read() as s:
            rows = (await s.execute(select(Agent).where(Agent.active).order_by(Agent.name))).scalars()
            return [principal_of(a) for a in rows]

    async def login(self, email: str, password: str) -> tuple[str, Principal]:
        """Check the password and open a session; the same error for unknown email and bad password."""
        try:
            email = normalise_email(email)
        except InvalidAddress:
            email = ""
        async with self.db.read() as s:
            agent = (
                await s.execute(select(Agent).where(Agent.email == email, Agent.active))
            ).scalar_one_or_none()
        try:
            _hasher.verify(agent.password_hash if agent else _dummy_hash(), password)
        except (VerificationError, InvalidHashError):
            agent = None
        if agent is None:
            raise UserError("invalid_credentials", "wrong email or password", status=401)
        token = secrets.token_urlsafe(32)
        now = utcnow()
        async with self.db.write() as s:
            s.add(
                ApiToken(
                    agent_id=agent.id,
                    token_hash=_token_hash(token),
                    created_at=now,
                    expires_at=now + self.session_ttl,
                )
            )
            await s.execute(delete(ApiToken).where(ApiToken.expires_at < now))
        return token, principal_of(agent)

    async def authenticate(self, token: str) -> Principal | None:
        if not token:
            return None
        async with self.db.read() as s:
            agent = (
                await s.execute(
                    select(Agent)
                    .join(ApiToken, ApiToken.agent_id == Agent.id)
                    .where(ApiToken.token_hash == _token_hash(token))
                    .where(ApiToken.expires_at > utcnow())
                    .where(Agent.active)
                )
            ).scalar_one_or_none()
        return principal_of(agent) if agent else None

    async def logout(self, token: str) -> None:
        async with self.db.write() as s:
            await s.execute(delete(ApiToken).where(ApiToken.token_hash == _token_hash(token)))

    async def get(self, agent_id: int) -> Principal | None:
        async with self.db.read() as s:
            agent = (
                await s.execute(select(Agent).where(Agent.id == agent_id, Agent.active))
            ).scalar_one_or_none()
        return principal_of(agent) if agent else None
