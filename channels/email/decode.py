"""Tolerant decoding of what mail really carries: bytes in missing or wrong charsets, raw 8-bit
headers, RFC 2047 encoded words (broken ones included) and address lists.

Headers are decoded here rather than by the standard library's header registry: for 8-bit headers and
unknown charsets it returns surrogate escapes, which ingest refuses as "not valid Unicode". Every
function here returns clean text (no surrogates, no NUL) and never raises on malformed input.
"""

from __future__ import annotations

import binascii
import re
from email.message import Message
from email.utils import getaddresses

# A header longer than this is cut before it is parsed (huge headers must cost little).
MAX_HEADER_CHARS = 16_384

# RFC 2047 §2: =?charset?encoding?encoded-text?= (an RFC 2231 language suffix "*en" is allowed).
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ANGLE_ID = re.compile(r"<([^<>\s]+)>")
_BARE_ADDRESS = re.compile(r"[^\s<>\"',;:()]+@[^\s<>\"',;:()]+")


def decode_bytes(data: bytes, declared: str | None = None) -> str:
    """Text from bytes: the declared charset, else UTF-8, else cp1252, else latin-1 (which cannot fail)."""
    for charset in (declared, "utf-8", "cp1252"):
        if not charset:
            continue
        try:
            return data.decode(charset)
        except (LookupError, UnicodeError, ValueError):
            continue
    return data.decode("latin-1", errors="replace")


def clean_text(text: str) -> str:
    """Drop NUL (PostgreSQL refuses it) and turn surrogate-escaped 8-bit bytes back into characters."""
    if any("\udc80" <= ch <= "\udcff" for ch in text):
        try:
            text = decode_bytes(text.encode("utf-8", errors="surrogateescape"))
        except UnicodeError:
            pass
    return text.encode("utf-8", errors="replace").decode("utf-8").replace("\x00", "")


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words; a word that does not decode is left as it was written.

    Adjacent words in one charset are joined before decoding (RFC 2047 §6.2), because mailers split
    multi-byte characters across words.
    """
    pieces: list[str] = []
    pending: bytearray = bytearray()
    pending_charset: str | None = None
    pos = 0

    def flush() -> None:
        nonlocal pending_charset
        if pending_charset is not None:
            pieces.append(decode_bytes(bytes(pending), pending_charset))
            pending.clear()
            pending_charset = None

    after_word = False
    for match in _ENCODED_WORD.finditer(value):
        between = value[pos : match.start()]
        charset = match.group(1).split("*", 1)[0].lower()
        data = _word_bytes(match.group(2), match.group(3))
        if data is None:
            flush()
            pieces.append(between + match.group(0))
        else:
            adjacent = after_word and not between.strip()
            if not (adjacent and charset == pending_charset):
                flush()
                if not adjacent:
                    pieces.append(between)
                pending_charset = charset
            pending.extend(data)
        after_word = data is not None
        pos = match.end()
    flush()
    pieces.append(value[pos:])
    return "".join(pieces)


def _word_bytes(encoding: str, text: str) -> bytes | None:
    try:
        raw = text.encode("ascii")
        if encoding in "bB":
            return binascii.a2b_base64(raw + b"=" * (-len(raw) % 4))
        return binascii.a2b_qp(raw, header=True)
    except (UnicodeError, ValueError):
        return None


def raw_values(msg: Message, name: str) -> list[str]:
    """Every value of header ``name``, unfolded, cut to MAX_HEADER_CHARS, 8-bit bytes decoded."""
    wanted = name.lower()
    values = []
    for key, value in msg.raw_items():
        if key.lower() == wanted:
            value = str(value)[:MAX_HEADER_CHARS].replace("\r", "").replace("\n", "")
            values.append(_CONTROL.sub("", clean_text(value)).strip())
    return values


def header_text(msg: Message, name: str) -> str | None:
    """The first value of an unstructured header (Subject), encoded words decoded; None when absent."""
    values = raw_values(msg, name)
    if not values:
        return None
    return " ".join(_CONTROL.sub("", clean_text(decode_words(values[0]))).split())


def addresses(msg: Message, *names: str) -> list[tuple[str, str]]:
    """``(display name, address)`` pairs from the named headers, in order; only entries with an ``@``."""
    found: list[tuple[str, str]] = []
    for name in names:
        for value in raw_values(msg, name):
            pairs = [(n, a) for n, a in getaddresses([value]) if "@" in a]
            if not pairs:
                pairs = [("", a) for a in _BARE_ADDRESS.findall(value)]
            for display, address in pairs:
                display = " ".join(clean_text(decode_words(display)).split()).strip("\"' ")
                found.append((display, address.strip()))
    return found


def message_ids(value: str | None) -> list[str]:
    """The ``<...>`` ids in a Message-ID, In-Reply-To or References value, brackets stripped."""
    if not value:
        return []
    ids = _ANGLE_ID.findall(value)
    if not ids and value.strip() and " " not in value.strip():
        ids = [value.strip()]
    return ids


def children(part: Message) -> list[Message]:
    """The sub-parts of a multipart or ``message/*`` part; ``[]`` for a leaf.

    A leaf's ``get_payload()`` decodes 8-bit text with its declared charset and raises for some
    (``idna``), so leaves are only ever read with ``get_payload(decode=True)``.
    """
    if not part.is_multipart():
        return []
    return [child for child in part.get_payload() if isinstance(child, Message)]
