"""Ingest throughput, and the database's own limit for the same rows.

X (``per_s``): N ``InboundMessage``s handed to ``Hub.ingest`` by ``concurrency`` drivers that each
await one message at a time, so about that many are in flight — what many channel connections do.
A share of the messages comes from new contacts (contact, identity, conversation and two events are
created); the rest from contacts seen before (the message threads into their open conversation).

The hub runs with its router off for ``per_s``: the figure is ingest's. ``routed_per_s`` is a second
run of the same load with the router on and no agent online, so the router plans, and records a
decision for, every new conversation while ingest runs — the cost routing adds today.

L (``limit_per_s``): see ``bench.limit``.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import func, select

from bench.common import emit, progress, rounded
from bench.limit import (
    LIMIT_BATCH,
    Chunk,
    database_settings,
    limit_chunks,
    migrated,
    postgres_limit,
    rows_per_message,
    sqlite_limit,
)
from bench.workload import Workload, inbound_messages, make_workload
from hub.app import Hub
from hub.config import HubConfig
from storage.models import Message


@dataclass(slots=True)
class HubRun:
    done: int
    seconds: float
    stored: int
    batches: int
    settings: dict[str, Any] = field(default_factory=dict)


async def run_hub(config: HubConfig, workload: Workload, concurrency: int, max_seconds: float) -> HubRun:
    messages = inbound_messages(workload)
    async with Hub(config) as hub:
        pending = iter(messages)
        done = 0
        deadline = time.perf_counter() + max_seconds

        async def drive() -> None:
            nonlocal done
            for msg in pending:
                await hub.ingest(msg)
                done += 1
                if time.perf_counter() > deadline:
                    return

        started = time.perf_counter()
        await asyncio.gather(*(drive() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        async with hub.db.read() as session:
            stored = int(await session.scalar(select(func.count()).select_from(Message)) or 0)
        settings = await database_settings(hub.db)
        return HubRun(done, seconds, stored, hub.ingester.batches, settings)


@dataclass(frozen=True, slots=True)
class IngestOptions:
    messages: int
    concurrency: int
    new_share: float
    max_seconds: float
    databases: tuple[str, ...]
    postgres_url: str


@dataclass(frozen=True, slots=True)
class Limit:
    seconds: float
    method: str
    chunks: list[Chunk]


def figure(
    db: str, workload: Workload, opts: IngestOptions, run: HubRun, limit: Limit, routed: HubRun
) -> dict[str, Any]:
    """``per_s`` is ingest alone (the router off); ``routed_per_s`` the same load with the router
    on and no agent online, so that it plans (and records a decision for) every new conversation."""
    per_s = run.done / run.seconds if run.seconds else 0.0
    limit_per_s = workload.messages / limit.seconds if limit.seconds else 0.0
    return {
        "bench": "ingest",
        "db": db,
        "messages": run.done,
        "per_s": rounded(per_s, 1),
        "limit_per_s": rounded(limit_per_s, 1),
        "ratio": rounded(per_s / limit_per_s if limit_per_s else 0.0),
        "routed_per_s": rounded(routed.done / routed.seconds if routed.seconds else 0.0, 1),
        "seconds": rounded(run.seconds),
        "concurrency": opts.concurrency,
        "contacts": len(set(workload.senders[: run.done])),
        "stored": run.stored,
        "batches": run.batches,
        "timed_out": run.done < workload.messages,
        "limit_messages": workload.messages,
        "limit_rows_per_message": rounded(rows_per_message(limit.chunks, workload.messages)),
        "limit_method": limit.method,
        **run.settings,
    }


async def bench_sqlite(opts: IngestOptions, workload: Workload, tmp: Path) -> dict[str, Any]:
    stamp = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
    chunks = limit_chunks(workload, stamp, "?")

    async def limit(attempt: int) -> float:
        path = tmp / f"limit-{attempt}.db"
        settings = await migrated(f"sqlite+aiosqlite:///{path}")
        return await asyncio.to_thread(sqlite_limit, path, chunks, settings)

    # The disk's fsync times wander; the limit is the better of one run before and one after.
    progress("ingest/sqlite: the sqlite3 limit")
    before = await limit(1)
    progress(f"ingest/sqlite: {workload.messages} messages, {opts.concurrency} in flight")
    config = HubConfig(data_dir=tmp / "hub-sqlite", routing_enabled=False)
    run = await run_hub(config, workload, opts.concurrency, opts.max_seconds)
    progress(f"ingest/sqlite: {run.done / run.seconds:,.0f} msg/s; again with the router on")
    routed = await run_hub(
        HubConfig(data_dir=tmp / "hub-sqlite-routed"), workload, opts.concurrency, opts.max_seconds
    )
    progress(f"ingest/sqlite: {routed.done / routed.seconds:,.0f} msg/s routed; the sqlite3 limit again")
    after = await limit(2)
    method = f"sqlite3 executemany, {LIMIT_BATCH} messages per transaction, best of 2"
    return figure("sqlite", workload, opts, run, Limit(min(before, after), method, chunks), routed)


def redacted(url: str) -> str:
    """The URL without its password, fit for printing."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


async def postgres_reachable(dsn: str) -> str | None:
    """None when we can use the server, else why not."""
    try:
        conn = await asyncio.wait_for(asyncpg.connect(dsn), 3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"PostgreSQL at {redacted(dsn)} is not reachable: {exc}"
    await conn.close()
    return None


async def bench_postgres(opts: IngestOptions, workload: Workload, tmp: Path) -> dict[str, Any]:
    admin = opts.postgres_url.replace("postgresql+asyncpg://", "postgresql://", 1)
    why_not = await postgres_reachable(admin)
    if why_not:
        progress(f"ingest/postgresql skipped: {why_not}")
        return {"bench": "ingest", "db": "postgresql", "skipped": why_not}
    base = admin.rsplit("/", 1)[0]
    names = [f"hub_bench_{tmp.name.lower().replace('-', '_')}_{role}" for role in ("hub", "limit")]
    hub_url, limit_url = (f"{base}/{n}".replace("postgresql://", "postgresql+asyncpg://", 1) for n in names)
    chunks = limit_chunks(workload, datetime.now(UTC), "${}")
    conn = await asyncpg.connect(admin)

    async def fresh(name: str) -> None:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')

    async def limit() -> float:
        await fresh(names[1])
        await migrated(limit_url)
        return await postgres_limit(f"{base}/{names[1]}", chunks)

    try:
        try:
            await fresh(names[0])
        except asyncpg.PostgresError as exc:
            why_not = f"cannot create a private database on {redacted(admin)}: {exc}"
            progress(f"ingest/postgresql skipped: {why_not}")
            return {"bench": "ingest", "db": "postgresql", "skipped": why_not}
        progress("ingest/postgresql: the asyncpg limit")
        before = await limit()
        progress(f"ingest/postgresql: {workload.messages} messages, {opts.concurrency} in flight")
        config = HubConfig(data_dir=tmp / "hub-postgresql", database_url=hub_url, routing_enabled=False)
        run = await run_hub(config, workload, opts.concurrency, opts.max_seconds)
        progress(f"ingest/postgresql: {run.done / run.seconds:,.0f} msg/s; again with the router on")
        await fresh(names[0])
        routed_config = HubConfig(data_dir=tmp / "hub-postgresql-routed", database_url=hub_url)
        routed = await run_hub(routed_config, workload, opts.concurrency, opts.max_seconds)
        progress(
            f"ingest/postgresql: {routed.done / routed.seconds:,.0f} msg/s routed; the asyncpg limit again"
        )
        after = await limit()
        method = (
            f"asyncpg copy (+ executemany for updates), {LIMIT_BATCH} messages per transaction, best of 2"
        )
        return figure("postgresql", workload, opts, run, Limit(min(before, after), method, chunks), routed)
    finally:
        for name in names:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()


async def run(opts: IngestOptions) -> list[dict[str, Any]]:
    workload = make_workload(opts.messages, opts.new_share)
    figures = []
    with tempfile.TemporaryDirectory(prefix="hub-bench-") as tmp:
        for db in opts.databases:
            if db == "sqlite":
                result = await bench_sqlite(opts, workload, Path(tmp))
            else:
                result = await bench_postgres(opts, workload, Path(tmp))
            emit(result)
            figures.append(result)
    return figures
