"""Reading mbox files: message boundaries, ``>From`` quoting, totals, and refusals instead of crashes."""

from __future__ import annotations

import hashlib
import mailbox
from email.message import EmailMessage
from pathlib import Path

import pytest

from channels.email.mbox import NotAnMbox, count_messages, read_mbox, split_mbox
from channels.email.parse import inbound_from, parse_email
from hub.model import ArchiveRefusal, InboundMessage

LIMIT = 1_000_000


def mail(n: int, body: str = "Hello", **headers: str) -> bytes:
    values = {
        "From": f"Customer {n} <c{n}@example.org>",
        "To": "support@example.com",
        "Subject": f"Question {n}",
        "Message-ID": f"<m{n}@example.org>",
        "Date": "Mon, 02 Nov 2026 10:00:00 +0000",
        **headers,
    }
    head = "".join(f"{k}: {v}\n" for k, v in values.items() if v)
    return f"{head}\n{body}\n".encode()


def mbox_file(path: Path, *messages: bytes, newline: bytes = b"\n") -> Path:
    """An mbox as mboxrd writers make it: a From line, body From lines quoted, a blank line after each."""
    out = []
    for raw in messages:
        out.append(b"From MAILER-DAEMON Mon Nov  2 10:00:00 2026\n")
        for line in raw.splitlines(keepends=True):
            out.append(b">" + line if line.lstrip(b">").startswith(b"From ") else line)
        out.append(b"\n")
    path.write_bytes(b"".join(out).replace(b"\n", newline))
    return path


def items(path: Path) -> list[InboundMessage | ArchiveRefusal]:
    return list(read_mbox(path, "mail", LIMIT))


def test_messages_come_in_file_order_with_a_total_counted_first(tmp_path: Path) -> None:
    path = mbox_file(tmp_path / "a.mbox", *(mail(n) for n in range(1, 6)))
    archive = read_mbox(path, "mail", LIMIT)
    assert archive.total == 5
    got = list(archive)
    assert [m.external_id for m in got] == [f"m{n}@example.org" for n in range(1, 6)]
    assert all(isinstance(m, InboundMessage) and m.channel == "mail" for m in got)
    assert [m.text for m in got if isinstance(m, InboundMessage)] == ["Hello"] * 5


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_quoted_from_lines_are_unquoted_once(tmp_path: Path, newline: bytes) -> None:
    body = "Dear team,\n\nFrom now on I use this address.\n>From the archive, quoted.\nBye"
    path = mbox_file(tmp_path / "q.mbox", mail(1, body), mail(2), newline=newline)
    assert b">From now on" in path.read_bytes() and b">>From the archive" in path.read_bytes()
    first, second = items(path)
    assert isinstance(first, InboundMessage) and isinstance(second, InboundMessage)
    assert first.full_text or first.text  # collapsed or not, the lines are there as sent
    text = first.full_text or first.text
    assert "\nFrom now on I use this address." in text
    assert "\n>From the archive, quoted." in text
    assert second.external_id == "m2@example.org"
    assert count_messages(path) == 2


def test_the_standard_library_mbox_writer_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "std.mbox"
    box = mailbox.mbox(path)
    try:
        for n in range(1, 4):
            msg = EmailMessage()
            msg["From"] = f"c{n}@example.org"
            msg["Subject"] = f"Std {n}"
            msg["Message-ID"] = f"<std{n}@example.org>"
            msg.set_content(f"From the start, message {n}.")
            box.add(msg)
        box.flush()
    finally:
        box.close()
    archive = read_mbox(path, "mail", LIMIT)
    got = list(archive)
    assert archive.total == len(got) == 3
    assert [m.text for m in got if isinstance(m, InboundMessage)] == [
        f"From the start, message {n}." for n in range(1, 4)
    ]


def test_a_message_that_cannot_be_parsed_is_a_refusal_not_a_crash(tmp_path: Path) -> None:
    no_sender = mail(2, From="")
    nameless = mail(3, From="", **{"Message-ID": ""})
    big = mail(
        4, "x" * 50, **{"Content-Type": "application/octet-stream", "Content-Disposition": "attachment"}
    )
    path = mbox_file(tmp_path / "bad.mbox", mail(1), no_sender, nameless, big, mail(5))
    archive = read_mbox(path, "mail", max_attachment_bytes=10)
    assert archive.total == 5
    got = list(archive)
    assert [type(m).__name__ for m in got] == [
        "InboundMessage",
        "ArchiveRefusal",
        "ArchiveRefusal",
        "ArchiveRefusal",
        "InboundMessage",
    ]
    refusals = [m for m in got if isinstance(m, ArchiveRefusal)]
    assert [r.position for r in refusals] == [2, 3, 4]
    assert refusals[0].external_id == "m2@example.org"
    assert "From header" in refusals[0].reason
    # Without a Message-ID the refusal names the message as parsing would: by the hash of its bytes.
    raw3 = list(split_mbox(path))[2]
    assert refusals[1].external_id == "sha256:" + hashlib.sha256(raw3).hexdigest()
    assert refusals[2].external_id == "m4@example.org" and "limit is 10 bytes" in refusals[2].reason


def test_totals_of_empty_and_odd_files(tmp_path: Path) -> None:
    empty = tmp_path / "empty.mbox"
    empty.write_bytes(b"")
    assert read_mbox(empty, "mail", LIMIT).total == 0 and items(empty) == []
    blank_start = tmp_path / "blank.mbox"
    blank_start.write_bytes(b"\n\n" + mbox_file(tmp_path / "one.mbox", mail(1)).read_bytes())
    archive = read_mbox(blank_start, "mail", LIMIT)
    assert archive.total == 1 and len(list(archive)) == 1
    # No blank line before the next From line: still two messages, as mailbox.mbox reads it.
    tight = tmp_path / "tight.mbox"
    tight.write_bytes(b"From a\n" + mail(1) + b"From b\n" + mail(2))
    got = items(tight)
    assert count_messages(tight) == len(got) == 2
    assert [m.external_id for m in got] == ["m1@example.org", "m2@example.org"]


def test_a_file_that_is_not_an_mbox_is_refused_whole(tmp_path: Path) -> None:
    eml = tmp_path / "single.eml"
    eml.write_bytes(mail(1))
    with pytest.raises(NotAnMbox, match="not an mbox file"):
        read_mbox(eml, "mail", LIMIT)
    with pytest.raises(FileNotFoundError):
        read_mbox(tmp_path / "missing.mbox", "mail", LIMIT)


def test_a_separator_across_read_boundaries_is_counted_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import channels.email.mbox as mbox_module

    path = mbox_file(tmp_path / "many.mbox", *(mail(n, "line\n" * (n % 7)) for n in range(1, 60)))
    for chunk in (1, 2, 3, 5, 7, 64):
        monkeypatch.setattr(mbox_module, "_CHUNK", chunk)
        assert count_messages(path) == 59


def test_messages_are_built_as_the_live_channel_builds_them(tmp_path: Path) -> None:
    reply = mail(
        2,
        "Thanks!\n\nOn Monday someone wrote:\n> Hello\n> there",
        Subject="Re: Question 1",
        **{"In-Reply-To": "<m1@example.org>", "References": "<m1@example.org>"},
    )
    auto = mail(3, "I am away", Subject="Out of office", **{"Auto-Submitted": "auto-replied"})
    path = mbox_file(tmp_path / "t.mbox", mail(1), reply, auto)
    first, second, third = items(path)
    assert isinstance(first, InboundMessage) and isinstance(second, InboundMessage)
    assert isinstance(third, InboundMessage)
    assert second == inbound_from(
        parse_email(list(split_mbox(path))[1], channel="mail", max_attachment_bytes=LIMIT)
    )
    assert all(m.thread.strict for m in (first, second, third))
    assert second.thread.in_reply_to == "m1@example.org" and second.thread.references == ("m1@example.org",)
    assert second.text == "Thanks!" and second.full_text is not None and "> Hello" in second.full_text
    assert first.full_text is None  # nothing collapsed: the text is the whole text
    assert third.automated and not first.automated and not second.automated
