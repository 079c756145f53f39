"""The ``hub`` command: serve, migrate, manage agents, import history. ``hub COMMAND --help`` for each."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from hub.config import HubConfig, load_config
from hub.errors import IngestRefused, UserError
from hub.model import ArchiveRefusal, InboundMessage, Role


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
        # Windows event loops have no signal handlers; there Ctrl-C stops the hub through
        # KeyboardInterrupt instead.
        if sys.platform != "win32":
            for sig in (signal.SIGINT, signal.SIGTERM):
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


# -- hub import ------------------------------------------------------------------------------------------

# Messages handed to ingest at once: enough for ingest to commit them in large groups, few enough
# that memory stays small whatever the archive's size.
IMPORT_IN_FLIGHT = 500
# Archive items read (and parsed) per trip to the worker thread, which keeps the event loop free to commit.
IMPORT_READ_BATCH = 50
# Refusals listed by name in the summary; the count covers the rest.
IMPORT_LIST_REFUSED = 20


class MissingFile(Exception):
    """The file to import does not exist or cannot be read (exit status 1)."""


@dataclass
class ImportTally:
    """What an import did, for its summary."""

    new: int = 0
    present: int = 0
    # (position in the archive, channel id or None, reason) as found; the summary sorts by position.
    refused: list[tuple[int, str | None, str]] = field(default_factory=list)

    @property
    def done(self) -> int:
        return self.new + self.present + len(self.refused)

    def summary(self) -> str:
        lines = [
            f"imported {self.new} new, {self.present} already present, {len(self.refused)} refused",
        ]
        for position, external_id, reason in sorted(self.refused)[:IMPORT_LIST_REFUSED]:
            lines.append(
                f"  refused message {position}{f' <{external_id}>' if external_id else ''}: {reason}"
            )
        if len(self.refused) > IMPORT_LIST_REFUSED:
            lines.append(f"  ... and {len(self.refused) - IMPORT_LIST_REFUSED} more refused")
        return "\n".join(lines)


class Progress:
    """Count/total, rate and ETA on ``stream``: redrawn in place about ten times a second on a
    terminal; otherwise (a log file, CI) a plain line every ``every`` seconds."""

    def __init__(self, total: int | None, stream: TextIO, *, every: float = 5.0) -> None:
        self.total = total
        self.stream = stream
        self.tty = stream.isatty()
        self.every = 0.1 if self.tty else every
        self.started = time.monotonic()
        self.shown = self.started

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.shown < self.every:
            return
        self.shown = now
        line = self.line(done, now - self.started)
        if self.tty:
            self.stream.write(f"\r{line}\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def line(self, done: int, elapsed: float) -> str:
        rate = done / elapsed if elapsed > 0 else 0.0
        if not self.total:
            return f"{done} messages, {rate:.0f}/s"
        share = min(done / self.total, 1.0)
        width = 30
        bar = "#" * int(share * width)
        eta = (self.total - done) / rate if rate > 0 else None
        when = (
            "--:--:--"
            if eta is None
            else f"{int(eta) // 3600:02d}:{int(eta) // 60 % 60:02d}:{int(eta) % 60:02d}"
        )
        return f"[{bar:<{width}}] {done}/{self.total} {share:4.0%} {rate:.0f}/s ETA {when}"


def _take(items: Iterator[InboundMessage | ArchiveRefusal], n: int) -> list[InboundMessage | ArchiveRefusal]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == n:
            break
    return batch


async def run_import(cfg: HubConfig, channel_name: str, path: Path, fmt: str) -> ImportTally:
    """Import an archive into a channel; idempotent, since ingest dedupes by (channel, external id).

    Messages are submitted concurrently (``IMPORT_IN_FLIGHT`` at most) so that ingest commits them in
    groups. Refusals, by the parser or by ingest, are recorded with the hub and listed; they never
    stop the import. Prints progress to stderr and the summary to stdout.
    """
    from hub.app import Hub

    names = [c.name for c in cfg.channels]
    if channel_name not in names:
        raise UserError(
            "unknown_channel",
            f"no channel named {channel_name!r}; configured channels: {', '.join(names) or 'none'}",
        )
    if not await asyncio.to_thread(path.is_file):
        raise MissingFile(f"{path}: no such file")
    tally = ImportTally()
    async with Hub(cfg, start_channels=False) as hub:
        channel = hub.channels[channel_name]
        try:
            archive = await asyncio.to_thread(channel.archive, path, fmt)
        except OSError as exc:
            raise MissingFile(f"{path}: {exc.strerror or exc}") from None
        except ValueError as exc:
            raise UserError("cannot_import", f"channel {channel_name!r}: {exc}") from None
        progress = Progress(archive.total, sys.stderr)

        async def refuse(refusal: ArchiveRefusal, sender: str | None = None) -> None:
            tally.refused.append((refusal.position, refusal.external_id, refusal.reason))
            known = refusal.external_id and refusal.external_id in await hub.known_ids(
                channel_name, [refusal.external_id]
            )
            if not known:  # a second import does not record the same refusal again
                await hub.refused(channel_name, refusal.external_id, refusal.reason, sender=sender)

        async def submit(position: int, msg: InboundMessage, window: asyncio.Semaphore) -> None:
            try:
                result = await hub.ingest(msg)
            except IngestRefused as exc:
                await refuse(ArchiveRefusal(msg.external_id or None, position, str(exc)), msg.sender)
            else:
                if result.duplicate:
                    tally.present += 1
                else:
                    tally.new += 1
            finally:
                window.release()
            progress.update(tally.done)

        items = iter(archive)
        window = asyncio.Semaphore(IMPORT_IN_FLIGHT)
        position = 0
        try:
            async with asyncio.TaskGroup() as group:
                while batch := await asyncio.to_thread(_take, items, IMPORT_READ_BATCH):
                    for item in batch:
                        position += 1
                        if isinstance(item, ArchiveRefusal):
                            await refuse(item)
                            progress.update(tally.done)
                            continue
                        await window.acquire()
                        group.create_task(submit(position, item, window))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        progress.update(tally.done, final=True)
    print(tally.summary(), flush=True)
    return tally


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

    imports = sub.add_parser(
        "import",
        help="import historical messages into a channel",
        description="Import historical messages; running it again imports only what is new.",
    )
    import_sub = imports.add_subparsers(dest="import_format", required=True, metavar="FORMAT")
    mbox = import_sub.add_parser(
        "mbox",
        parents=[common],
        help="import an mbox file into an email channel",
        description=(
            "Import every message of an mbox file into an email channel, threaded and stored as if it "
            "had arrived by IMAP. Messages already stored are skipped; messages that cannot be stored "
            "are recorded as refused and listed. Progress goes to standard error, the summary to "
            "standard output. Works while `hub serve` runs."
        ),
    )
    mbox.add_argument("file", type=Path, help="the mbox file")
    mbox.add_argument("--channel", required=True, help="name of the configured channel to import into")
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
        elif args.command == "import":
            asyncio.run(run_import(cfg, args.channel, args.file, args.import_format))
    except UserError as exc:
        print(f"hub: {exc.detail or exc.error}", file=sys.stderr)
        return 2
    except MissingFile as exc:
        print(f"hub: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
