"""A PostgreSQL server for the tests: ``$HUB_TEST_DATABASE_URL``, else the one on 127.0.0.1:5432,
else a private one started from the Debian binaries in a temporary directory (also with
``HUB_TEST_DATABASE_URL=private``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import asyncpg

T = TypeVar("T")


@dataclass
class PostgresServer:
    admin_url: str  # postgresql+asyncpg://... of an existing database we may CREATE DATABASE from
    private_dir: Path | None = None

    def stop(self) -> None:
        if self.private_dir is not None:
            bindir = _bindir()
            if bindir:
                subprocess.run(
                    [
                        "runuser",
                        "-u",
                        "postgres",
                        "--",
                        f"{bindir}/pg_ctl",
                        "-D",
                        str(self.private_dir / "data"),
                        "-m",
                        "immediate",
                        "stop",
                    ],
                    capture_output=True,
                    check=False,
                )
            shutil.rmtree(self.private_dir, ignore_errors=True)


def run_in_thread(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even when called inside a running loop."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def _bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return os.path.dirname(found[-1]) if found else None


async def _reachable(url: str) -> bool:
    try:
        conn = await asyncio.wait_for(asyncpg.connect(url.replace("+asyncpg", "")), 3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await conn.close()
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_private() -> PostgresServer | None:
    bindir = _bindir()
    if bindir is None or os.geteuid() != 0 or shutil.which("runuser") is None:
        return None
    base = Path(tempfile.mkdtemp(prefix="hub-pg-"))
    port = _free_port()
    shutil.chown(base, "postgres")
    as_pg = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_pg,
            f"{bindir}/initdb",
            "-D",
            str(base / "data"),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        ],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *as_pg,
            f"{bindir}/pg_ctl",
            "-D",
            str(base / "data"),
            "-l",
            str(base / "pg.log"),
            "-w",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off",
            "start",
        ],
        check=True,
        capture_output=True,
    )
    return PostgresServer(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres", base)


def find_postgres() -> tuple[PostgresServer | None, str]:
    """The server to use and, when there is none, why."""
    explicit = os.environ.get("HUB_TEST_DATABASE_URL")
    if explicit == "private":  # force the private server, e.g. to test this fallback itself
        try:
            private = _start_private()
        except (OSError, subprocess.CalledProcessError) as exc:
            return None, f"a private PostgreSQL failed to start: {exc}"
        return private, "" if private else "no PostgreSQL binaries to start a private server"
    if explicit:
        url = explicit.replace("postgresql://", "postgresql+asyncpg://", 1)
        if run_in_thread(_reachable(url)):
            return PostgresServer(url), ""
        return None, f"HUB_TEST_DATABASE_URL={explicit} is not reachable"
    local = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
    if run_in_thread(_reachable(local)):
        return PostgresServer(local), ""
    try:
        private = _start_private()
    except (OSError, subprocess.CalledProcessError) as exc:
        return None, f"no PostgreSQL on 127.0.0.1:5432 and a private one failed to start: {exc}"
    if private is None:
        return (
            None,
            "no PostgreSQL on 127.0.0.1:5432 and no binaries to start one (apt-get install postgresql)",
        )
    return private, ""


async def create_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(admin_url.replace("+asyncpg", ""))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return admin_url.rsplit("/", 1)[0] + "/" + name


async def drop_database(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url.replace("+asyncpg", ""))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
