"""Historical mail from an mbox file (RFC 4155) as the email channel's messages, for ``hub import mbox``.

The file is read as a stream, one message in memory at a time, so a mailbox of several gigabytes
imports in constant memory. Contract:

- A message starts at every line beginning with ``From `` (the rule of the standard library's
  ``mailbox.mbox``, and of most writers); the blank line that separates messages is not part of one.
- Body lines that writers quoted as ``>From `` (``>>From ``, ...) lose one ``>`` ("mboxrd"), so the
  text reads as it was sent.
- Each message goes through :func:`~channels.email.parse.parse_email` and
  :func:`~channels.email.parse.inbound_from`, exactly as a message fetched by IMAP does; one that
  cannot be parsed becomes an :class:`~hub.model.ArchiveRefusal` with its reason, never an exception.

``mailbox.mbox`` itself is not used: it opens the file for writing, indexes the whole file before the
first message, and does not undo the ``>From`` quoting.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

from channels.email.parse import inbound_from, parse_email, raw_external_id
from hub.errors import IngestRefused
from hub.model import ArchiveRefusal, InboundMessage

SEPARATOR = b"From "
_QUOTED_FROM = re.compile(rb">+From ")
_CHUNK = 1 << 20
_BLANK = (b"\n", b"\r\n")


class NotAnMbox(ValueError):
    """The file does not start with a ``From `` line: it is something else (a single .eml, say)."""


class MboxArchive:
    """The messages of one mbox file for one email channel (an :class:`hub.types.Archive`)."""

    def __init__(self, path: Path, channel: str, max_attachment_bytes: int) -> None:
        self.path = path
        self.channel = channel
        self.max_attachment_bytes = max_attachment_bytes
        # Counted before reading so that an import can show progress; a pass of bytes.count only.
        self.total: int | None = count_messages(path)

    def __iter__(self) -> Iterator[InboundMessage | ArchiveRefusal]:
        for position, raw in enumerate(split_mbox(self.path), start=1):
            try:
                parsed = parse_email(
                    raw, channel=self.channel, max_attachment_bytes=self.max_attachment_bytes
                )
            except IngestRefused as exc:
                yield ArchiveRefusal(raw_external_id(raw), position, str(exc))
            else:
                yield inbound_from(parsed)


def read_mbox(path: Path, channel: str, max_attachment_bytes: int) -> MboxArchive:
    """The archive of ``path`` for the email channel named ``channel``; raises OSError when the file
    cannot be read and :class:`NotAnMbox` when it is not an mbox file."""
    return MboxArchive(path, channel, max_attachment_bytes)


def count_messages(path: Path) -> int:
    """How many messages :func:`split_mbox` will yield, without parsing any (1 MiB reads, C counting)."""
    count = 0
    # The last bytes read, too short to hold a whole separator, so that one split across two reads
    # is found exactly once; the file's start counts as a line start.
    tail = b"\n"
    with path.open("rb") as file:
        _check_start(file.read(4096), path)
        file.seek(0)
        while chunk := file.read(_CHUNK):
            window = tail + chunk
            count += window.count(b"\n" + SEPARATOR)
            tail = window[-len(SEPARATOR) :]
    return count


def split_mbox(path: Path) -> Iterator[bytes]:
    """Each message of the file as raw bytes (without its ``From `` line), unquoted, in file order."""
    with path.open("rb") as file:
        lines: list[bytes] | None = None  # None until the first separator
        for line in file:
            if line.startswith(SEPARATOR):
                if lines is not None:
                    yield _message(lines)
                lines = []
            elif lines is None:
                _check_start(line, path)  # only blank lines may come before the first message
            elif line.startswith(b">") and _QUOTED_FROM.match(line):
                lines.append(line[1:])
            else:
                lines.append(line)
        if lines is not None:
            yield _message(lines)


def _message(lines: list[bytes]) -> bytes:
    if lines and lines[-1] in _BLANK:
        lines.pop()  # the separating blank line belongs to the file, not to the message
    return b"".join(lines)


def _check_start(data: bytes, path: Path) -> None:
    head = data.lstrip(b"\r\n")
    if head and not head.startswith(SEPARATOR[: len(head)]):
        raise NotAnMbox(f"{path} is not an mbox file: it does not start with a 'From ' line")
