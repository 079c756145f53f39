"""``python -m bench [ingest] [webchat] [route] [email] [options]``: run the benchmarks, one JSON line
per figure."""

from __future__ import annotations

import argparse
import asyncio
import sys

from bench import email, ingest, route, webchat
from bench.common import emit, progress

BENCHMARKS = ("ingest", "webchat", "route", "email")
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"

# (full run, --quick): the full run follows the targets and stays under about two minutes.
SIZES = {
    "messages": (20_000, 2_000),
    "concurrency": (500, 200),
    "max_seconds": (45.0, 10.0),
    "visitors": (1_000, 50),
    "rate": (1_000.0, 200.0),
    "duration": (15.0, 2.0),
    "agents": (2_000, 200),
    "queued": (10_000, 1_000),
    "queues": (200, 20),
    "skills": (50, 10),
    "arrivals": (200, 20),
    "email_samples": (100, 10),
    "email_backlog": (10_000, 1_000),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(
            "Benchmarks of the hub. Each figure is one JSON line on stdout; progress goes to stderr. "
            "Timings never make a run fail; a broken path (a hub that does not start, a lost socket) does."
        ),
        epilog=(
            "ingest: {bench, db, messages, per_s, limit_per_s, ratio, ...} per database; "
            "webchat: {bench: websocket_echo, ...} then {bench: webchat_to_agent, visitors, rate, "
            "p50_ms, p90_ms, p99_ms, max_ms, lost, ...}; route: {bench: route, db, agents, queued, "
            "queues, skills, p50_ms, p99_ms, assignments_per_s, ...} then {bench: route_arrival, db, "
            "p50_ms, p99_ms, ...} per database; email: {bench: email_push, server, samples, p50_ms, "
            "p99_ms, ...} per IMAP server (dovecot, pymap) then {bench: email_catchup, server, messages, "
            "per_s, seconds}. See bench/ingest.py, bench/webchat.py, bench/route.py and bench/email.py "
            "for what each figure measures."
        ),
    )
    parser.add_argument(
        "benchmarks",
        nargs="*",
        metavar="BENCHMARK",
        help=f"which to run: {', '.join(BENCHMARKS)} (default: all)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes for a smoke run of about 10 s")
    size = parser.add_argument_group("ingest")
    size.add_argument("--messages", type=int, help="messages to ingest (default 20000; quick 2000)")
    size.add_argument("--concurrency", type=int, help="messages in flight (default 500; quick 200)")
    size.add_argument(
        "--new-contacts",
        type=float,
        default=0.25,
        help="share of messages from a contact not seen before (default 0.25)",
    )
    size.add_argument(
        "--max-seconds", type=float, help="stop submitting after this long per database (default 45)"
    )
    size.add_argument(
        "--db",
        default="sqlite,postgresql",
        help="comma-separated databases: sqlite, postgresql (default both; PostgreSQL is skipped "
        "with a reason when unreachable)",
    )
    size.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES,
        help=f"a PostgreSQL database to create private bench databases from (default {DEFAULT_POSTGRES})",
    )
    chat = parser.add_argument_group("webchat")
    chat.add_argument("--visitors", type=int, help="visitor websockets (default 1000; quick 50)")
    chat.add_argument("--rate", type=float, help="messages per second, all visitors together (default 1000)")
    chat.add_argument("--duration", type=float, help="seconds of sending (default 15; quick 2)")
    chat.add_argument("--no-echo", action="store_true", help="skip the websocket echo baseline")
    routing = parser.add_argument_group("route (also uses --db and --postgres-url)")
    routing.add_argument("--agents", type=int, help="online agents (default 2000; quick 200)")
    routing.add_argument(
        "--queued", type=int, help="conversations waiting at the start (default 10000; quick 1000)"
    )
    routing.add_argument("--queues", type=int, help="queues (default 200; quick 20)")
    routing.add_argument("--skills", type=int, help="skill names (default 50; quick 10)")
    routing.add_argument(
        "--arrivals", type=int, help="new conversations timed one by one (default 200; quick 20)"
    )
    mail = parser.add_argument_group("email (Dovecot and pymap; skipped with a reason without Dovecot)")
    mail.add_argument(
        "--email-samples", type=int, help="mails timed one by one per IMAP server (default 100; quick 10)"
    )
    mail.add_argument(
        "--email-backlog",
        type=int,
        help="mails appended while the hub is down, then drained (default 10000; quick 1000)",
    )
    return parser


def sized(args: argparse.Namespace, name: str) -> float:
    value = getattr(args, name)
    return value if value is not None else SIZES[name][1 if args.quick else 0]


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in args.benchmarks:
        if name not in BENCHMARKS:
            parser.error(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")
    for name in SIZES:
        if sized(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= args.new_contacts <= 1:
        parser.error("--new-contacts must be between 0 and 1")
    unknown = set(args.db.split(",")) - {"sqlite", "postgresql"}
    if unknown:
        parser.error(f"--db: unknown database {', '.join(sorted(unknown))}")


async def run(args: argparse.Namespace) -> int:
    chosen = args.benchmarks or list(BENCHMARKS)
    failed = 0
    # Latency first: PostgreSQL's clean-up after the ingest runs must not disturb it.
    if "webchat" in chosen:
        chat = webchat.WebchatOptions(
            visitors=int(sized(args, "visitors")),
            rate=sized(args, "rate"),
            duration=sized(args, "duration"),
            echo=not args.no_echo,
        )
        try:
            await webchat.run(chat)
        except Exception as exc:
            failed += 1
            progress(f"webchat failed: {exc!r}")
            emit({"bench": "webchat_to_agent", "error": repr(exc)})
    if "ingest" in chosen:
        opts = ingest.IngestOptions(
            messages=int(sized(args, "messages")),
            concurrency=int(sized(args, "concurrency")),
            new_share=args.new_contacts,
            max_seconds=sized(args, "max_seconds"),
            databases=tuple(args.db.split(",")),
            postgres_url=args.postgres_url,
        )
        try:
            await ingest.run(opts)
        except Exception as exc:
            failed += 1
            progress(f"ingest failed: {exc!r}")
            emit({"bench": "ingest", "error": repr(exc)})
    if "route" in chosen:
        opts_route = route.RouteOptions(
            agents=int(sized(args, "agents")),
            queued=int(sized(args, "queued")),
            queues=int(sized(args, "queues")),
            skills=int(sized(args, "skills")),
            arrivals=int(sized(args, "arrivals")),
            databases=tuple(args.db.split(",")),
            postgres_url=args.postgres_url,
        )
        try:
            await route.run(opts_route)
        except Exception as exc:
            failed += 1
            progress(f"route failed: {exc!r}")
            emit({"bench": "route", "error": repr(exc)})
    if "email" in chosen:
        opts_email = email.EmailOptions(
            samples=int(sized(args, "email_samples")), backlog=int(sized(args, "email_backlog"))
        )
        try:
            await email.run(opts_email)
        except Exception as exc:
            failed += 1
            progress(f"email failed: {exc!r}")
            emit({"bench": "email", "error": repr(exc)})
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check(parser, args)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
