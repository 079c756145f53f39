"""The database's own limit for the rows ingest writes: the yardstick of the ingest figure.

L (``limit_per_s``): the rows that ingest writes for the same messages, written by the driver's
fastest bulk path (sqlite3 ``executemany``; on PostgreSQL asyncpg ``COPY``, and ``executemany`` for
the updates), one transaction per 100 messages, into the hub's migrated schema (same indexes and
constraints) with the settings the hub's engine gives its connection (SQLite: journal_mode,
synchronous, foreign_keys read back from it; PostgreSQL: the server's). Counted per message: one
``messages`` row, one ``message.received`` event and one ``UPDATE conversations`` per conversation
touched in the transaction; per new contact also one ``contacts``, ``contact_identities`` and
``conversations`` row and the ``contact.created`` and ``conversation.created`` events. Rows are
built before the clock starts and carry their ids; the lookups ingest makes (replays, identities,
open conversations) are not counted. L is the better of one run before the hub's and one after, as
fsync times wander. It is a yardstick, not a ceiling: group commit may put more than 100 messages
in a transaction, so a ratio above 1 is possible.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text

from bench.workload import CHANNEL, Workload, message_text, visitor
from storage.engine import Database
from storage.migrate import upgrade

# Messages per transaction.
LIMIT_BATCH = 100

COLUMNS: dict[str, tuple[str, ...]] = {
    "contacts": ("id", "name", "attributes", "merged_into_id", "created_at", "updated_at"),
    "contact_identities": ("id", "contact_id", "kind", "value", "created_at"),
    "conversations": (
        "id",
        "contact_id",
        "channel",
        "channel_kind",
        "address",
        "status",
        "assignee_id",
        "priority",
        "subject",
        "created_at",
        "updated_at",
        "last_message_at",
        "resolved_at",
    ),
    "messages": (
        "id",
        "conversation_id",
        "contact_id",
        "channel",
        "external_id",
        "direction",
        "status",
        "agent_id",
        "sender",
        "author_name",
        "text",
        "html",
        "error",
        "meta",
        "created_at",
    ),
    "events": ("id", "type", "at", "conversation_id", "contact_id", "message_id", "agent_id", "data"),
}
UPDATE_CONVERSATION = (
    "UPDATE conversations SET status={}, updated_at={}, last_message_at={}, resolved_at={} WHERE id={}"
)


Chunk = list[tuple[str, list[tuple[Any, ...]]]]


def _insert(table: str, placeholder: str) -> str:
    cols = COLUMNS[table]
    marks = ", ".join(placeholder.format(i + 1) for i in range(len(cols)))
    return f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({marks})"


def _row(table: str, **values: Any) -> tuple[Any, ...]:
    return tuple(values[column] for column in COLUMNS[table])


def limit_chunks(workload: Workload, stamp: Any, placeholder: str) -> list[Chunk]:
    """The rows of each 100-message transaction, in foreign-key order, ids assigned."""
    chunks: list[Chunk] = []
    event_ids = iter(range(1, 10 * workload.messages + 1))
    seen: set[int] = set()
    times = {"created_at": stamp, "updated_at": stamp}
    for start in range(0, workload.messages, LIMIT_BATCH):
        rows: dict[str, list[tuple[Any, ...]]] = {table: [] for table in COLUMNS}
        touched: dict[int, None] = {}
        for i in range(start, min(start + LIMIT_BATCH, workload.messages)):
            contact = workload.senders[i]
            contact_id = conversation_id = contact + 1
            address, name, body = visitor(contact), f"Visitor {contact}", message_text(i)
            if contact not in seen:
                seen.add(contact)
                rows["contacts"].append(
                    _row("contacts", id=contact_id, name=name, attributes="{}", merged_into_id=None, **times)
                )
                rows["contact_identities"].append(
                    _row(
                        "contact_identities",
                        id=contact_id,
                        contact_id=contact_id,
                        kind="webchat",
                        value=address,
                        created_at=stamp,
                    )
                )
                rows["conversations"].append(
                    _row(
                        "conversations",
                        id=conversation_id,
                        contact_id=contact_id,
                        channel=CHANNEL,
                        channel_kind="webchat",
                        address=address,
                        status="open",
                        assignee_id=None,
                        priority=0,
                        subject=None,
                        last_message_at=stamp,
                        resolved_at=None,
                        **times,
                    )
                )
                for kind, conv, data in (
                    ("contact.created", None, {"identity": ["webchat", address]}),
                    (
                        "conversation.created",
                        conversation_id,
                        {"channel": CHANNEL, "channel_kind": "webchat", "assignee_id": None},
                    ),
                ):
                    rows["events"].append(
                        _row(
                            "events",
                            id=next(event_ids),
                            type=kind,
                            at=stamp,
                            conversation_id=conv,
                            contact_id=contact_id,
                            message_id=None,
                            agent_id=None,
                            data=json.dumps(data),
                        )
                    )
            rows["messages"].append(
                _row(
                    "messages",
                    id=i + 1,
                    conversation_id=conversation_id,
                    contact_id=contact_id,
                    channel=CHANNEL,
                    external_id=f"bench-{i}",
                    direction="in",
                    status="received",
                    agent_id=None,
                    sender=address,
                    author_name=name,
                    text=body,
                    html=None,
                    error=None,
                    meta="{}",
                    created_at=stamp,
                )
            )
            received = {"channel": CHANNEL, "channel_kind": "webchat", "assignee_id": None}
            rows["events"].append(
                _row(
                    "events",
                    id=next(event_ids),
                    type="message.received",
                    at=stamp,
                    conversation_id=conversation_id,
                    contact_id=contact_id,
                    message_id=i + 1,
                    agent_id=None,
                    data=json.dumps({**received, "text": body, "author": name}),
                )
            )
            touched[conversation_id] = None
        chunk: Chunk = [(_insert(t, placeholder), rows[t]) for t in COLUMNS if t != "events" and rows[t]]
        marks = [placeholder.format(n) for n in range(1, 6)]
        chunk.append(
            (UPDATE_CONVERSATION.format(*marks), [("open", stamp, stamp, None, cid) for cid in touched])
        )
        chunk.append((_insert("events", placeholder), rows["events"]))
        chunks.append(chunk)
    return chunks


def rows_per_message(chunks: list[Chunk], messages: int) -> float:
    return sum(len(rows) for chunk in chunks for _, rows in chunk) / max(messages, 1)


def sqlite_limit(path: Path, chunks: list[Chunk], pragmas: dict[str, Any]) -> float:
    """Seconds to write ``chunks`` with sqlite3, one BEGIN IMMEDIATE ... COMMIT each."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for name, value in pragmas.items():
            conn.execute(f"PRAGMA {name}={value}")
        started = time.perf_counter()
        for chunk in chunks:
            conn.execute("BEGIN IMMEDIATE")
            for sql, rows in chunk:
                conn.executemany(sql, rows)
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()


async def postgres_limit(dsn: str, chunks: list[Chunk]) -> float:
    """Seconds to write ``chunks`` with asyncpg: COPY for the inserts (PostgreSQL's fastest way in),
    ``executemany`` for the conversation updates; one transaction each."""
    conn = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        for chunk in chunks:
            async with conn.transaction():
                for sql, rows in chunk:
                    table = sql.split()[2] if sql.startswith("INSERT") else None
                    if table is not None:
                        await conn.copy_records_to_table(table, records=rows, columns=COLUMNS[table])
                    else:
                        await conn.executemany(sql, rows)
        return time.perf_counter() - started
    finally:
        await conn.close()


async def database_settings(db: Database) -> dict[str, Any]:
    """The durability settings the hub's own engine gives its write connection."""
    async with db.writer.connect() as conn:
        if db.is_sqlite:
            pragmas = ("journal_mode", "synchronous", "foreign_keys")
            found = {p: (await conn.exec_driver_sql(f"PRAGMA {p}")).scalar() for p in pragmas}
        else:
            found = {"synchronous_commit": (await conn.execute(text("SHOW synchronous_commit"))).scalar()}
        await conn.rollback()
    return found


async def migrated(url: str) -> dict[str, Any]:
    """Migrate a fresh database with the hub's migrations; return the hub's settings for it."""
    db = Database(url)
    try:
        await upgrade(db)
        return await database_settings(db)
    finally:
        await db.dispose()
