"""The async engines: SQLite (WAL) by default, PostgreSQL through asyncpg when the URL says so.

SQLite allows one writer at a time. Rather than let several connections race for the write lock
(and fail with SQLITE_BUSY when a read transaction tries to upgrade), all writes go through one
connection that begins with ``BEGIN IMMEDIATE``; reads use their own pool and never block it.
On PostgreSQL both roles share one pooled engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session

T = TypeVar("T")


def sqlite_url(data_dir: Path) -> str:
    return f"sqlite+aiosqlite:///{(data_dir / 'hub.db').resolve()}"


def normalise_url(url: str) -> str:
    """Accept the URLs people paste (postgres://, postgresql://) and pick the async driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    if url.startswith("sqlite:///"):
        return "sqlite+aiosqlite:///" + url[len("sqlite:///") :]
    return url


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets readers run beside the writer. synchronous=FULL fsyncs every commit, so a message
    # acknowledged after commit survives power loss, not only a process crash.
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _begin_*)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_setup(engine: Engine, *, immediate: bool) -> None:
    event.listen(engine, "connect", _sqlite_pragmas)
    begin = "BEGIN IMMEDIATE" if immediate else "BEGIN"
    event.listen(engine, "begin", lambda conn: conn.exec_driver_sql(begin))


def _sqlite_engine(url: str, *, immediate: bool, pool_size: int) -> AsyncEngine:
    engine = create_async_engine(
        url, connect_args={"timeout": 30}, pool_size=pool_size, max_overflow=0 if immediate else pool_size
    )
    _sqlite_setup(engine.sync_engine, immediate=immediate)
    return engine


class Database:
    """The hub's handle on its database: ``write()`` and ``read()`` transactions."""

    def __init__(self, url: str, *, pool_size: int = 10) -> None:
        self.url = normalise_url(url)
        if self.is_sqlite:
            path = self.url.split(":///", 1)[-1]
            if path and not path.startswith(":memory:"):
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.writer = _sqlite_engine(self.url, immediate=True, pool_size=1)
            self.reader = _sqlite_engine(self.url, immediate=False, pool_size=pool_size)
            # Batch writes (ingest) run whole on a thread of their own, see run_write.
            self._batch_thread: ThreadPoolExecutor | None = ThreadPoolExecutor(1, "sqlite-batch-writer")
            self._batch_engine: Engine | None = create_engine(
                self.url.replace("sqlite+aiosqlite", "sqlite+pysqlite", 1),
                connect_args={"timeout": 30},
                pool_size=1,
                max_overflow=0,
            )
            _sqlite_setup(self._batch_engine, immediate=True)
        else:
            self.writer = create_async_engine(
                self.url,
                pool_size=pool_size,
                max_overflow=pool_size,
                pool_pre_ping=True,
            )
            self.reader = self.writer
            self._batch_thread = None
            self._batch_engine = None
        self._write_sessions = async_sessionmaker(self.writer, expire_on_commit=False)
        self._read_sessions = async_sessionmaker(self.reader, expire_on_commit=False)

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    @property
    def dialect(self) -> str:
        return "sqlite" if self.is_sqlite else "postgresql"

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction, committed when the block exits without an exception."""
        async with self._write_sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read_sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def exclusive(self, key: int) -> AsyncIterator[bool]:
        """Whether this process holds ``key`` among every process sharing the database, for the block.

        PostgreSQL: a session advisory lock, tried without waiting, on a connection kept for the
        block (a process that dies releases it with its connection). SQLite: always True; its single
        writer already serialises what the lock guards.
        """
        if self.is_sqlite:
            yield True
            return
        async with self.writer.connect() as conn:
            got = bool((await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar())
            await conn.commit()
            try:
                yield got
            finally:
                if got:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                    await conn.commit()

    async def run_write(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` (synchronous code over a Session) in one write transaction, committed when it
        returns.

        On SQLite the whole transaction runs on a dedicated thread with the synchronous driver: one
        thread hand-off per transaction instead of four per statement through aiosqlite, which made a
        fixed cost of several milliseconds per ingest batch. On PostgreSQL it runs on the async
        connection (SQLAlchemy's greenlet bridge), so the same code serves both.
        """
        if self._batch_engine is None or self._batch_thread is None:
            async with self.write() as session:
                return await session.run_sync(work)
        engine = self._batch_engine

        def transaction() -> T:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                return work(session)

        return await asyncio.get_running_loop().run_in_executor(self._batch_thread, transaction)

    async def dispose(self) -> None:
        await self.writer.dispose()
        if self.reader is not self.writer:
            await self.reader.dispose()
        if self._batch_engine is not None and self._batch_thread is not None:
            # The pooled sqlite3 connection belongs to its thread: close it there.
            await asyncio.get_running_loop().run_in_executor(self._batch_thread, self._batch_engine.dispose)
            self._batch_thread.shutdown(wait=True)
            self._batch_engine = None
