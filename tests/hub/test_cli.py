"""The ``hub`` command, run as a user runs it: a subprocess on a fresh data dir (SQLite)."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import ClientSession

from hub.cli import main

HUB = Path(sys.executable).with_name("hub")
COMMAND = [str(HUB)] if HUB.exists() else [sys.executable, "-m", "hub.cli"]
STARTED = "hub serving on"


def clean_env() -> dict[str, str]:
    """The caller's environment without HUB_* settings, which would point the hub elsewhere."""
    return {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}


def run(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], cwd=cwd, env=clean_env(), input=stdin, capture_output=True, text=True, timeout=60
    )


async def run_async(*args: str, cwd: Path, stdin: str = "") -> tuple[int, str, str]:
    """`run` without blocking the event loop, for commands issued while a server is running."""
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        cwd=cwd,
        env=clean_env(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Served:
    base: str
    startup: str  # everything printed until the hub said it was serving


@asynccontextmanager
async def hub_serve(data_dir: Path) -> AsyncIterator[Served]:
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        *COMMAND,
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        cwd=data_dir.parent,
        env=clean_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(30):
            while not lines or STARTED not in lines[-1]:
                line = await proc.stdout.readline()
                assert line, "hub serve exited early:\n" + "".join(lines)
                lines.append(line.decode())
        yield Served(f"http://127.0.0.1:{port}", "".join(lines))
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(proc.stdout.read(), 30)
        await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0, "".join(lines) + rest.decode()


async def login(base: str, email: str, password: str) -> tuple[int, dict[str, object]]:
    async with (
        ClientSession() as http,
        http.post(f"{base}/api/session", json={"email": email, "password": password}) as r,
    ):
        return r.status, await r.json()


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--help"], ["serve", "migrate", "agent"]),
        (["serve", "--help"], ["--host", "--port", "--data-dir", "--config"]),
        (["migrate", "--help"], ["--data-dir", "--database-url"]),
        (["agent", "--help"], ["add"]),
        (["agent", "add", "--help"], ["email", "--name", "--role", "--password-stdin"]),
    ],
    ids=["hub", "serve", "migrate", "agent", "agent add"],
)
def test_help(tmp_path: Path, args: list[str], mentions: list[str]) -> None:
    done = run(*args, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: hub")
    for word in mentions:
        assert word in done.stdout, word


def test_migrate_a_fresh_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "var"
    first = run("migrate", "--data-dir", str(data), cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "migrated from empty" in first.stdout
    assert (data / "hub.db").exists()
    again = run("migrate", "--data-dir", str(data), cwd=tmp_path)
    assert again.returncode == 0 and "up to date" in again.stdout


FIRST_LOGIN = re.compile(r"email:\s+(\S+)\s+password:\s+(\S+)")


async def test_first_start_prints_the_admin_login_once(tmp_path: Path) -> None:
    data = tmp_path / "var"
    async with hub_serve(data) as served:
        found = FIRST_LOGIN.search(served.startup)
        assert found, served.startup
        email, password = found.groups()
        status, body = await login(served.base, email, password)
        assert status == 200 and body["agent"]["role"] == "admin"  # type: ignore[index]
    async with hub_serve(data) as served:
        assert "First start" not in served.startup and password not in served.startup
        assert (await login(served.base, email, password))[0] == 200


async def test_agent_add_while_serving_can_log_in_at_once(tmp_path: Path) -> None:
    data = tmp_path / "var"
    add = ["agent", "add", "--data-dir", str(data)]
    async with hub_serve(data) as served:
        # Two at once, as two admins might: SQLite's one writer makes the second wait, not fail.
        generated, chosen = await asyncio.gather(
            run_async(*add, "Sue@Example.com", "--name", "Sue", "--role", "supervisor", cwd=tmp_path),
            run_async(
                *add,
                "ann@example.com",
                "--name",
                "Ann",
                "--password-stdin",
                cwd=tmp_path,
                stdin="chosen password 1\n",
            ),
        )
        code, out, err = generated
        assert code == 0, err
        password = re.search(r"^password: (\S+)$", out, re.MULTILINE)
        assert password, out
        status, body = await login(served.base, "sue@example.com", password.group(1))
        assert status == 200, body
        assert body["agent"] == {
            "id": body["agent"]["id"],
            "email": "sue@example.com",
            "name": "Sue",
            "role": "supervisor",
            "status": "online",
            "presence": "offline",
        }  # type: ignore[index]

        code, out, err = chosen
        assert code == 0, err
        assert "password" not in out  # nothing generated, nothing echoed
        status, body = await login(served.base, "ann@example.com", "chosen password 1")
        assert status == 200 and body["agent"]["role"] == "agent"  # type: ignore[index]


@pytest.mark.parametrize(
    ("args", "stdin", "says"),
    [
        (["admin@example.com", "--name", "Again"], "", "already exists"),
        (["bob@example.com", "--name", "Bob", "--password-stdin"], "short\n", "at least 8"),
        (["not-an-address", "--name", "Nobody"], "", "not an email address"),
    ],
    ids=["existing email", "short password", "bad email"],
)
def test_agent_add_refuses_bad_input(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    stdin: str,
    says: str,
) -> None:
    """In-process (the argument handling is what is tested; a subprocess only adds seconds)."""
    data = str(tmp_path / "var")
    for key in [k for k in os.environ if k.startswith("HUB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setattr(sys, "stdin", io.StringIO("first admin pw\n"))
    assert (
        main(["agent", "add", "admin@example.com", "--name", "Admin", "--password-stdin", "--data-dir", data])
        == 0
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    assert main(["agent", "add", *args, "--data-dir", data]) == 2
    assert says in capsys.readouterr().err
