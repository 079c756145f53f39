"""Composing replies (channels.email.compose): headers, threading, bodies, attachments, injection."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.header import decode_header, make_header
from email.message import EmailMessage, MIMEPart
from typing import Any

import pytest

from channels.email.compose import (
    MAX_REFERENCES,
    compose,
    display_name,
    new_message_id,
    references_chain,
    reply_address,
    reply_subject,
    text_to_html,
)
from hub.errors import PermanentError
from hub.model import Attachment, OutboundMessage, ThreadHints

OUTLOOK_ID = "<DM6PR11MB4562D1E8B3C9A4F5E2B4B0E7C9A12345@DM6PR11MB4562.namprd11.prod.outlook.com>"

MakeOutbound = Callable[..., OutboundMessage]
Compose = Callable[..., EmailMessage]


@pytest.fixture
def outbound() -> MakeOutbound:
    def make(**overrides: Any) -> OutboundMessage:
        values: dict[str, Any] = {
            "message_id": 7,
            "conversation_id": 1234,
            "channel": "support-mail",
            "recipient": "customer@example.org",
            "text": "Hello,\n\nyour parcel left today.\nTracking: 42",
            "author_name": "Alice",
            "created_at": datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
            "thread": ThreadHints(subject="Where is my parcel?"),
        }
        return OutboundMessage(**(values | overrides))

    return make


@pytest.fixture
def composed(outbound: MakeOutbound) -> Compose:
    """compose() with an inbox's settings, then the bytes a server receives parsed back."""

    def run(msg: OutboundMessage | None = None, **overrides: Any) -> EmailMessage:
        values: dict[str, Any] = {
            "from_address": "support@example.com",
            "from_name": "Example Support",
            "reply_to": "support+c1234@example.com",
            "message_id": "<m1@example.com>",
            "in_reply_to": "<customer-1@example.org>",
            "references": ["<customer-1@example.org>"],
        }
        message = compose(msg or outbound(), **(values | overrides))
        return wire(message)

    return run


def wire(message: EmailMessage) -> EmailMessage:
    raw = message.as_bytes()
    assert all(len(line) <= 998 for line in raw.split(b"\r\n")), "RFC 5321 line length"
    assert raw.isascii(), "7-bit on the wire whatever the server offers"
    parsed = message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    parsed.raw = raw  # type: ignore[attr-defined]
    return parsed


def content(part: MIMEPart | None) -> str:
    """A text part's content with the wire's CRLF line ends as the agent typed them."""
    assert part is not None
    text: str = part.get_content()
    return text.replace("\r\n", "\n")


def header_names(message: EmailMessage) -> list[str]:
    return [name.lower() for name in message.keys()]


def test_headers_of_a_reply(composed: Compose) -> None:
    m = composed()
    assert m["From"].addresses[0].display_name == "Alice via Example Support"
    assert m["From"].addresses[0].addr_spec == "support@example.com"
    assert m["To"].addresses[0].addr_spec == "customer@example.org"
    assert m["Reply-To"].addresses[0].addr_spec == "support+c1234@example.com"
    assert m["Subject"] == "Re: Where is my parcel?"
    assert m["Message-ID"] == "<m1@example.com>"
    assert m["In-Reply-To"] == "<customer-1@example.org>"
    assert m["References"] == "<customer-1@example.org>"
    assert m["Date"] == "Mon, 06 May 2024 07:08:09 +0000"
    assert m["Auto-Submitted"] == "no"
    assert m.get_content_type() == "multipart/alternative"


def test_non_ascii_display_name_is_encoded(composed: Compose, outbound: MakeOutbound) -> None:
    m = composed(outbound(author_name="Zoë Müller"), from_name="Служба поддержки")
    raw: bytes = m.raw  # type: ignore[attr-defined]
    [folded] = re.findall(rb"\r\nFrom: (.*?)\r\n(?! )", b"\r\n" + raw, re.DOTALL)
    assert b"=?utf-8?" in folded
    # RFC 2047 6.2 decoding (what mail clients do); CPython's address parser keeps the space between
    # two encoded-words of one phrase, so m["From"].addresses is not the reference here.
    assert str(make_header(decode_header(folded.decode()))) == (
        "Zoë Müller via Служба поддержки <support@example.com>"
    )


@pytest.mark.parametrize(
    ("author", "inbox", "expected"),
    [
        ("Alice", "Support", "Alice via Support"),
        ("Alice", None, "Alice"),
        (None, "Support", "Support"),
        ("  ", "", None),
        (None, None, None),
        ("Eve\r\nBcc: victim@example.net", "Support", "Eve Bcc: victim@example.net via Support"),
    ],
)
def test_display_name(author: str | None, inbox: str | None, expected: str | None) -> None:
    assert display_name(author, inbox) == expected


def test_from_without_any_name_is_the_bare_address(composed: Compose, outbound: MakeOutbound) -> None:
    m = composed(outbound(author_name=None), from_name=None, reply_to=None)
    assert str(m["From"]) == "support@example.com"
    assert "reply-to" not in header_names(m)


@pytest.mark.parametrize(
    ("inbox", "conversation", "expected"),
    [
        ("support@example.com", 1234, "support+c1234@example.com"),
        (" Support@Example.com ", 1, "Support+c1@Example.com"),
        ("support+sales@example.com", 9, "support+sales+c9@example.com"),
    ],
)
def test_reply_address(inbox: str, conversation: int, expected: str) -> None:
    assert reply_address(inbox, conversation) == expected


@pytest.mark.parametrize("conversation", [0, -3])
def test_reply_address_needs_a_conversation(conversation: int) -> None:
    with pytest.raises(ValueError):
        reply_address("support@example.com", conversation)


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("Where is my parcel?", "Re: Where is my parcel?"),
        ("Re: Where is my parcel?", "Re: Where is my parcel?"),
        ("RE: re:Where", "Re: Where"),
        ("Aw: SV: Antw: Hallo", "Re: Hallo"),
        ("Re[2]: Hello", "Re: Hello"),
        ("Fwd: invoice", "Re: Fwd: invoice"),
        ("Remarks", "Re: Remarks"),
        ("", "Re:"),
        (None, "Re:"),
        ("Hi\r\nBcc: victim@example.net", "Re: Hi Bcc: victim@example.net"),
    ],
)
def test_reply_subject(subject: str | None, expected: str) -> None:
    assert reply_subject(subject) == expected


def test_first_message_of_a_conversation_keeps_its_subject(composed: Compose) -> None:
    m = composed(in_reply_to=None, references=[])
    assert m["Subject"] == "Where is my parcel?"
    assert "in-reply-to" not in header_names(m)
    assert "references" not in header_names(m)


def test_new_message_id() -> None:
    first, second = new_message_id("example.com"), new_message_id("Example.COM")
    assert re.fullmatch(r"<[0-9a-f]{32}@example\.com>", first)
    assert first != second


@pytest.mark.parametrize("domain", ["", "exa mple.com", "a@b", "x>y", "example.com\r\nBcc: x"])
def test_new_message_id_refuses_bad_domains(domain: str) -> None:
    with pytest.raises(ValueError):
        new_message_id(domain)


def test_references_end_with_the_parent_and_drop_garbage() -> None:
    chain = references_chain(
        ["<root@a>", "not an id", "<b@b>", "c@c", "<root@a>", "<x@y>\r\nBcc: v@w", "<>"], "<parent@p>"
    )
    assert chain == ["<b@b>", "<c@c>", "<root@a>", "<parent@p>"]


def test_references_are_bounded_and_keep_the_root() -> None:
    ids = [f"<{n}@thread>" for n in range(100)]
    chain = references_chain(ids, "<parent@p>")
    assert len(chain) == MAX_REFERENCES
    assert chain[0] == "<0@thread>"
    assert chain[-2:] == ["<99@thread>", "<parent@p>"]


def test_long_ids_are_folded_between_ids_never_encoded(composed: Compose) -> None:
    references = [OUTLOOK_ID.replace("DM6", f"DM{n}") for n in range(5)]
    m = composed(in_reply_to=OUTLOOK_ID, references=references)
    raw: bytes = m.raw  # type: ignore[attr-defined]
    assert b"=?" not in raw.split(b"\r\n\r\n")[0].split(b"Subject:")[0]
    assert m["In-Reply-To"] == OUTLOOK_ID
    assert m["References"].split() == [*references, OUTLOOK_ID]


def test_text_and_html_alternatives(composed: Compose, outbound: MakeOutbound) -> None:
    m = composed(outbound(text="Use <b>bold</b> & stay\r\nsafe.\n\n\nBye"))
    text, html = (content(part) for part in m.iter_parts())
    assert text == "Use <b>bold</b> & stay\nsafe.\n\n\nBye\n"
    assert "<p>Use &lt;b&gt;bold&lt;/b&gt; &amp; stay<br>\nsafe.</p>\n<p>Bye</p>" in html


def test_html_given_by_the_agent_is_used(composed: Compose, outbound: MakeOutbound) -> None:
    m = composed(outbound(text="Hi", html="<p>Hi <i>there</i></p>"))
    assert content(m.get_body(("html",))) == "<p>Hi <i>there</i></p>\n"
    assert content(m.get_body(("plain",))) == "Hi\n"


def test_text_to_html_escapes_quotes() -> None:
    assert "<p>&quot;a&quot; &#x27;b&#x27;</p>" in text_to_html("\"a\" 'b'\n")


def test_non_ascii_and_long_lines_survive(composed: Compose, outbound: MakeOutbound) -> None:
    text = "Grüße aus Köln — 日本語 " + "x" * 2000
    m = composed(outbound(text=text))
    assert content(m.get_body(("plain",))) == text + "\n"


def test_attachments_round_trip(composed: Compose, outbound: MakeOutbound) -> None:
    binary = bytes(range(256)) * 40
    attachments = (
        Attachment("invoice.pdf", "application/pdf", binary),
        Attachment("Übersicht März.csv", "text/csv", "a;b\nä;ö\n".encode()),
        Attachment("../../etc/passwd\r\nBcc: x", "not a type", b"data"),
        Attachment("forward.eml", "message/rfc822", b"Subject: x\r\n\r\nhi\r\n"),
    )
    m = composed(outbound(attachments=attachments))
    assert m.get_content_type() == "multipart/mixed"
    assert m.get_body(("plain",)) is not None and m.get_body(("html",)) is not None
    got = [(a.get_filename(), a.get_content_type(), a.get_payload(decode=True)) for a in m.iter_attachments()]
    assert got == [
        ("invoice.pdf", "application/pdf", binary),
        ("Übersicht März.csv", "text/csv", "a;b\nä;ö\n".encode()),
        (".._.._etc_passwd Bcc: x", "application/octet-stream", b"data"),
        ("forward.eml", "application/octet-stream", b"Subject: x\r\n\r\nhi\r\n"),
    ]


def test_attachment_bytes_come_from_the_callable(composed: Compose, outbound: MakeOutbound) -> None:
    stored = {"sha256:abc": b"%PDF-1.7 stored bytes"}
    msg = outbound(attachments=(Attachment("a.pdf", "application/pdf", b"sha256:abc"),))
    m = composed(msg, open_attachment=lambda a: stored[a.data.decode()])
    [attachment] = m.iter_attachments()
    assert attachment.get_payload(decode=True) == b"%PDF-1.7 stored bytes"


def test_header_injection_is_neutralised(composed: Compose, outbound: MakeOutbound) -> None:
    evil = "x\r\nBcc: victim@example.net\r\nX-Evil: 1"
    msg = outbound(author_name=evil, thread=ThreadHints(subject=evil))
    m = composed(msg, from_name=evil, in_reply_to=f"<a@b>{evil}", references=[evil, "<ok@b>"])
    assert "bcc" not in header_names(m)
    assert "x-evil" not in header_names(m)
    assert sorted(set(header_names(m))) == sorted(header_names(m)), "no header twice"
    assert m["Subject"] == "Re: x Bcc: victim@example.net X-Evil: 1"
    assert "in-reply-to" not in header_names(m)
    assert m["References"] == "<ok@b>"


@pytest.mark.parametrize(
    "recipient",
    [
        "",
        "not an address",
        "a@b.com\r\nBcc: victim@example.net",
        "a@b.com, c@d.com",
        "@",
        "a@",
        "@b",
        "<a@b.com>",
        "a@b@c",
        "a b@c",
        "a@b.com\x00",
        "jürgen@example.de",
    ],
)
def test_unusable_recipient_is_a_permanent_error(outbound: MakeOutbound, recipient: str) -> None:
    with pytest.raises(PermanentError, match="not an email address"):
        compose(
            outbound(recipient=recipient),
            from_address="support@example.com",
            from_name=None,
            reply_to=None,
            message_id="<m1@example.com>",
            in_reply_to=None,
            references=[],
        )


def test_internationalised_domain_goes_out_in_ascii(composed: Compose, outbound: MakeOutbound) -> None:
    m = composed(outbound(recipient="kunde@bücher.de"))
    assert m["To"].addresses[0].addr_spec == "kunde@xn--bcher-kva.de"


def test_message_id_must_be_one(outbound: MakeOutbound) -> None:
    with pytest.raises(ValueError, match="not a Message-ID"):
        compose(
            outbound(),
            from_address="support@example.com",
            from_name=None,
            reply_to=None,
            message_id="m1 example.com",
            in_reply_to=None,
            references=[],
        )
