"""The ``hub`` command: serve, migrate, manage agents. ``hub COMMAND --help`` for each."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from hub.config import HubConfig, load_config
from hub.errors import UserError
from hub.model import Role


def _config(args: argparse.Namespace) -> HubConfig:
    cfg = load_config(args.config)
    if getattr(args, "data_dir", None):
        cfg.data_dir = Path(args.data_dir)
    if getattr(args, "database_url", None):
        cfg.database_url = args.database_url
    if getattr(args, "host", None):
        cfg.host = args.host
    if getattr(args, "port", None):
        cfg.port = args.port
    return cfg


def _banner(text: str) -> None:
    line = "=" * 64
    print(f"\n{line}\n{text}\n{line}\n", flush=True)


async def _serve(cfg: HubConfig) -> None:
    from aiohttp import web

    from hub.app import Hub
    from hub.web.app import make_app

    async with Hub(cfg) as hub:
        first = await hub.ensure_first_admin()
        if first:
            email, password = first
            _banner(
                "First start: an admin agent was created. Log in at "
                f"http://{cfg.host}:{cfg.port}/\n  email:    {email}\n  password: {password}\n"
                "This password is shown once. Add more agents with `hub agent add`."
            )
        runner = web.AppRunner(make_app(hub), access_log=None, shutdown_timeout=5)
        await runner.setup()
        site = web.TCPSite(runner, cfg.host, cfg.port)
        await site.start()
        print(
            f"hub serving on http://{cfg.host}:{cfg.port}/ (inbox), /chat (web-chat demo), "
            f"/api/openapi.json; database {hub.db.dialect}; data in {cfg.data_dir}",
            flush=True,
        )
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Event loops without signal handlers (Windows) raise here; there Ctrl-C still stops the
            # hub through KeyboardInterrupt, so going on without the handler is the intended path.
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            print("hub stopping", flush=True)
            await runner.cleanup()


async def _migrate(cfg: HubConfig) -> None:
    from storage.engine import Database
    from storage.migrate import upgrade

    db = Database(cfg.effective_database_url)
    try:
        before, after = await upgrade(db)
    finally:
        await db.dispose()
    if before == after:
        print(f"database is up to date (revision {after})")
    else:
        print(f"database migrated from {before or 'empty'} to {after}")


async def _agent_add(cfg: HubConfig, email: str, name: str, role: Role, password: str | None) -> None:
    from hub.auth import Accounts, generate_password
    from hub.events import EventBus
    from storage.engine import Database
    from storage.migrate import upgrade

    db = Database(cfg.effective_database_url)
    try:
        await upgrade(db)
        chosen = password or generate_password()
        agent = await Accounts(db, EventBus()).add(email, name, role, chosen)
    finally:
        await db.dispose()
    print(f"added {agent.role.value} {agent.name} <{agent.email}> (id {agent.id})")
    if password is None:
        print(f"password: {chosen}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hub", description="Omnichannel communications hub: every customer channel behind one inbox."
    )
    parser.add_argument("--version", action="version", version="hub 0.1.0")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", type=Path, help="TOML configuration file (default: $HUB_CONFIG, else none)"
    )
    common.add_argument(
        "--data-dir", help="where the SQLite database, secret and attachments live (default ./var)"
    )
    common.add_argument("--database-url", help="overrides $HUB_DATABASE_URL, e.g. postgresql://user@host/db")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        parents=[common],
        help="run the hub (migrates the database first)",
        description="Run the hub: web inbox, API, channels and outbox dispatcher.",
    )
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8080)")

    sub.add_parser(
        "migrate",
        parents=[common],
        help="apply database migrations",
        description="Bring the database schema to the newest revision.",
    )

    agent = sub.add_parser("agent", help="manage agents", description="Manage agents.")
    agent_sub = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    add = agent_sub.add_parser(
        "add",
        parents=[common],
        help="add an agent",
        description="Add an agent. Works while `hub serve` runs; they can log in at once.",
    )
    add.add_argument("email")
    add.add_argument("--name", required=True, help="display name shown to colleagues and customers")
    add.add_argument("--role", choices=[r.value for r in Role], default="agent")
    add.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from standard input (otherwise one is generated and printed)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = _config(args)
        logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("alembic").setLevel(logging.WARNING)
        if args.command == "serve":
            asyncio.run(_serve(cfg))
        elif args.command == "migrate":
            asyncio.run(_migrate(cfg))
        elif args.command == "agent":
            password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
            asyncio.run(_agent_add(cfg, args.email, args.name, Role(args.role), password))
    except UserError as exc:
        print(f"hub: {exc.detail or exc.error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
