"""``hub import mbox`` as a user runs it: a subprocess on a configuration with an email channel (SQLite)."""

from __future__ import annotations

import contextlib
import io
import sqlite3
import subprocess
from pathlib import Path

import pytest

from hub.cli import ImportTally, Progress
from tests.hub.test_cli import COMMAND, clean_env

GROUPS = 100  # three messages each: 300 in all

CONFIG = """\
[server]
data_dir = "{data}"
log_level = "WARNING"

[limits]
max_message_chars = 5000

[[channels]]
kind = "email"
name = "mail"
address = "support@example.com"

[channels.smtp]
host = "127.0.0.1"
port = 2525
security = "none"
"""


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, *args], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=90
    )


def mail(n: int, sender: str, subject: str, body: str, *, reply_to: int | None = None) -> bytes:
    lines = [
        f"From: Customer <{sender}>",
        "To: support@example.com",
        f"Subject: {subject}",
        f"Message-ID: <m{n}@example.org>",
        f"Date: Mon, 02 Nov 2026 {n // 60 % 24:02d}:{n % 60:02d}:00 +0000",
    ]
    if reply_to is not None:
        lines += [f"In-Reply-To: <m{reply_to}@example.org>", f"References: <m{reply_to}@example.org>"]
    return ("\n".join(lines) + f"\n\n{body}\n").encode()


def history(path: Path) -> Path:
    """Per customer g: a question (3g+1), a new matter (3g+2) and a reply to the question (3g+3); then
    one message without a sender, which cannot be parsed, and one longer than ingest takes."""
    out: list[bytes] = []
    for g in range(GROUPS):
        sender = f"c{g}@example.org"
        first, other, reply = 3 * g + 1, 3 * g + 2, 3 * g + 3
        for raw in (
            mail(first, sender, f"Order {g}", "Where is my order?\nFrom what I see it left."),
            mail(other, sender, f"Invoice {g}", "Please send the invoice."),
            mail(reply, sender, f"Re: Order {g}", "Found it, thanks.", reply_to=first),
        ):
            out.append(b"From MAILER-DAEMON Mon Nov  2 10:00:00 2026\n")
            out.append(raw.replace(b"\nFrom what", b"\n>From what"))
            out.append(b"\n")
    out.append(b"From MAILER-DAEMON Mon Nov  2 10:00:00 2026\n")
    out.append(b"To: support@example.com\nSubject: nobody\nMessage-ID: <orphan@example.org>\n\nhi\n\n")
    out.append(b"From MAILER-DAEMON Mon Nov  2 10:00:00 2026\n")
    out.append(mail(0, "long@example.org", "Long", "x" * 6000).replace(b"<m0@", b"<long@") + b"\n")
    path.write_bytes(b"".join(out))
    return path


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "hub.toml"
    config.write_text(CONFIG.format(data=tmp_path / "var"), encoding="utf-8")
    return config, history(tmp_path / "history.mbox")


def conversations(db: Path) -> dict[str, int]:
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT external_id, conversation_id FROM messages WHERE channel = 'mail'")
        return {external_id: conversation_id for external_id, conversation_id in rows}


@pytest.mark.slow
def test_import_twice_imports_once_and_threads_replies(setup: tuple[Path, Path], tmp_path: Path) -> None:
    config, mbox = setup
    args = ("import", "mbox", str(mbox), "--channel", "mail", "--config", str(config))
    first = run(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert f"imported {3 * GROUPS} new, 0 already present, 2 refused" in first.stdout
    assert "refused message 301 <orphan@example.org>:" in first.stdout and "From header" in first.stdout
    assert (
        "refused message 302 <long@example.org>: message is 6000 characters; the limit is 5000"
        in first.stdout
    )
    assert f"{3 * GROUPS + 2}/{3 * GROUPS + 2}" in first.stderr  # the final progress line

    again = run(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"imported 0 new, {3 * GROUPS} already present, 2 refused" in again.stdout

    stored = conversations(tmp_path / "var" / "hub.db")
    assert len(stored) == 3 * GROUPS
    with contextlib.closing(sqlite3.connect(tmp_path / "var" / "hub.db")) as conn:
        (text,) = conn.execute("SELECT text FROM messages WHERE external_id = 'm1@example.org'").fetchone()
        (refusals,) = conn.execute("SELECT count(*) FROM refusals WHERE channel = 'mail'").fetchone()
        (events,) = conn.execute("SELECT count(*) FROM events WHERE type = 'message.refused'").fetchone()
    assert "\nFrom what I see it left." in text  # the mbox quoting is undone
    assert refusals == 2 and events == 2  # the second import recorded no refusal again
    for g in range(GROUPS):
        first_id, other_id, reply_id = (f"m{3 * g + k}@example.org" for k in (1, 2, 3))
        assert stored[reply_id] == stored[first_id], f"reply of group {g} left its thread"
        assert stored[other_id] != stored[first_id], f"new subject of group {g} joined the old matter"


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--channel", "nope"], 2, "no channel named 'nope'; configured channels: mail"),
        (["--channel", "mail", "--file-is-missing"], 1, "no such file"),
        ([], 2, "--channel"),
    ],
    ids=["unknown channel", "missing file", "no channel given"],
)
def test_usage_errors_say_what_is_wrong(
    setup: tuple[Path, Path], tmp_path: Path, args: list[str], code: int, says: str
) -> None:
    config, mbox = setup
    target = str(tmp_path / "absent.mbox") if "--file-is-missing" in args else str(mbox)
    args = [a for a in args if a != "--file-is-missing"]
    done = run("import", "mbox", target, *args, "--config", str(config), cwd=tmp_path)
    assert done.returncode == code, done.stderr
    assert says in done.stderr
    assert done.stdout == ""


def test_a_channel_kind_without_archives_says_so(tmp_path: Path) -> None:
    mbox = history(tmp_path / "history.mbox")
    config = tmp_path / "chat.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "var"}"\n\n[[channels]]\nkind = "webchat"\n')
    done = run("import", "mbox", str(mbox), "--channel", "webchat", "--config", str(config), cwd=tmp_path)
    assert done.returncode == 2
    assert "channel kind webchat cannot import mbox" in done.stderr


def test_import_help_names_its_arguments(tmp_path: Path) -> None:
    done = run("import", "mbox", "--help", cwd=tmp_path)
    assert done.returncode == 0
    for word in ("file", "--channel", "--config", "--data-dir"):
        assert word in done.stdout


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_off_a_terminal_is_a_plain_line_every_few_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr("hub.cli.time.monotonic", clock)
    out = io.StringIO()
    progress = Progress(1000, out, every=5.0)
    for done in range(0, 1001, 100):
        progress.update(done)
        clock.now += 1.0
    clock.now -= 1.0
    progress.update(1000, final=True)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines == [
        f"[{'#' * 15:<30}] 500/1000  50% 100/s ETA 00:00:05",
        f"[{'#' * 30}] 1000/1000 100% 100/s ETA 00:00:00",
        f"[{'#' * 30}] 1000/1000 100% 100/s ETA 00:00:00",
    ]
    assert Progress(None, io.StringIO()).line(50, 10.0) == "50 messages, 5/s"


def test_the_summary_lists_twenty_refusals_and_counts_the_rest() -> None:
    tally = ImportTally(
        new=5, present=2, refused=[(n, f"m{n}" if n % 2 else None, "bad") for n in range(25, 0, -1)]
    )
    lines = tally.summary().splitlines()
    assert lines[0] == "imported 5 new, 2 already present, 25 refused"
    assert lines[1:3] == ["  refused message 1 <m1>: bad", "  refused message 2: bad"]
    assert len(lines) == 22 and lines[-1] == "  ... and 5 more refused"
