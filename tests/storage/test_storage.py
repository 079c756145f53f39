"""Storage on SQLite and PostgreSQL: migrations match the models, timestamps stay UTC-aware,
pre-allocated ids never collide, the unique keys hold."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.bulk import insert_rows
from storage.engine import Database, normalise_url
from storage.ids import allocate_ids
from storage.migrate import upgrade
from storage.models import Base, Contact, ContactIdentity, Event


def _diff(sync_conn: Any) -> list[Any]:
    return compare_metadata(MigrationContext.configure(sync_conn), Base.metadata)


async def test_migrations_build_exactly_the_models(database: Database) -> None:
    async with database.writer.connect() as conn:
        assert await conn.run_sync(_diff) == []


async def test_migrating_twice_is_a_no_op(database: Database) -> None:
    before, after = await upgrade(database)
    assert before == after


async def test_timestamps_come_back_aware_and_in_utc(database: Database) -> None:
    local = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    async with database.write() as s:
        s.add(Contact(name="t", attributes={}, created_at=local, updated_at=local))
    async with database.read() as s:
        contact = (await s.execute(select(Contact))).scalar_one()
        assert contact.created_at == local
        assert contact.created_at.tzinfo == UTC
        later = (
            await s.execute(select(Contact.id).where(Contact.created_at > local - timedelta(seconds=1)))
        ).all()
        assert len(later) == 1


async def test_naive_timestamps_are_refused(database: Database) -> None:
    with pytest.raises(Exception, match="naive"):
        async with database.write() as s:
            s.add(
                Contact(
                    name="t", attributes={}, created_at=datetime(2026, 1, 1), updated_at=datetime(2026, 1, 1)
                )
            )
            await s.flush()


async def test_preallocated_ids_do_not_collide_under_concurrency(database: Database) -> None:
    now = datetime.now(UTC)

    async def writer(n: int) -> list[int]:
        async with database.write() as s:
            ids = await s.run_sync(allocate_ids, Event, 50)
            await s.execute(insert(Event), [{"id": i, "type": "t", "at": now, "data": {"n": n}} for i in ids])
            return ids

    def batch_writer(s: Session) -> list[int]:
        """The other write path (Database.run_write), racing the async one for the same ids."""
        ids = allocate_ids(s, Event, 50)
        insert_rows(s, Event, [{"id": i, "type": "t", "at": now, "data": {}} for i in ids])
        return ids

    batches = await asyncio.gather(
        *(writer(n) for n in range(4)), *(database.run_write(batch_writer) for _ in range(4))
    )
    flat = [i for b in batches for i in b]
    assert len(set(flat)) == 400
    async with database.read() as s:
        assert len((await s.execute(select(Event.id))).all()) == 400


async def test_an_address_belongs_to_one_contact(database: Database) -> None:
    now = datetime.now(UTC)
    async with database.write() as s:
        a = Contact(name="a", attributes={}, created_at=now, updated_at=now)
        b = Contact(name="b", attributes={}, created_at=now, updated_at=now)
        s.add_all([a, b])
        await s.flush()
        s.add(ContactIdentity(contact_id=a.id, kind="email", value="x@example.com", created_at=now))
    with pytest.raises(IntegrityError):
        async with database.write() as s:
            s.add(ContactIdentity(contact_id=b.id, kind="email", value="x@example.com", created_at=now))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("sqlite:////tmp/x.db", "sqlite+aiosqlite:////tmp/x.db"),
    ],
)
def test_database_urls_people_paste_are_accepted(given: str, expected: str) -> None:
    assert normalise_url(given) == expected
