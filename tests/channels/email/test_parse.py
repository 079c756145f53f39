"""parse_email on fixture files of real-world mail: every one is stored with its key fields, or refused
with a reason; quote collapsing and reply tags on their own; and a seeded fuzz over byte mutations.
"""

from __future__ import annotations

import base64
import hashlib
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from channels.email.parse import ParsedEmail, parse_email, reply_tag
from channels.email.quotes import collapse_quotes, html_to_text
from hub.errors import IngestRefused
from hub.model import IdentityKind

FIXTURES = Path(__file__).parent / "fixtures"
LIMIT = 1_000_000


def parse(raw: bytes, limit: int = LIMIT, **kwargs: Any) -> ParsedEmail:
    return parse_email(raw, channel="support-mail", max_attachment_bytes=limit, **kwargs)


@dataclass(frozen=True)
class Stored:
    sender: str
    name: str | None
    subject: str | None
    text_start: str
    attachments: tuple[tuple[str, str, int], ...] = ()
    in_reply_to: str | None = None
    references: tuple[str, ...] = ()
    reply_tag: str | None = None
    auto_reply: bool = False
    bounce: tuple[str | None, str | None, str | None, str] | None = None
    external_id: str | None = None  # None: the Message-ID must be a real one, checked below
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Refused:
    reason: str
    limit: int = LIMIT


CASES: dict[str, Stored | Refused] = {
    "missing_charset_8bit": Stored(
        "h.baecker@example.de", "Hans Baecker", "Lieferung",
        "Guten Tag,\n\nmeine Lieferung ist noch nicht angekommen. Können Sie bitte nachsehen?"
        "\n\nGrüße\nHans Bäcker",
    ),
    "wrong_charset": Stored(
        "ana.lima@example.org", "Ana Lima", "Order 5521",
        "Olá! The café grinder I ordered arrived with a cracked lid — can you send a new one?",
    ),
    "headers_8bit": Stored(
        "joerg@example.de", "Jörg Müller", "Rückfrage zur Lieferung", "Wann kommt meine Bestellung?"
    ),
    "encoded_words": Stored(
        "francois@example.fr", "François Dupont",
        # a word split mid-character is joined; an unknown charset falls back; a broken word stays as written
        "Réclamation : commande élevécafé =?utf-8?Q?non_termin",
        "Bonjour,\n\nma commande est arrivée abîmée.\n\nFrançois",
    ),
    "broken_boundary": Stored(
        "peter@example.cz", "Peter Novak", "Invoice question",
        "Hello, the invoice attached has the wrong VAT number.",
        attachments=(("invoice-88.txt", "text/plain", 26),),
    ),
    "nested_forward": Stored(
        "maria@example.it", "Maria Rossi", "Fwd: Broken kettle",
        "Please see my husband's complaint attached.",
        attachments=(("Broken kettle.eml", "message/rfc822", 247),),
    ),
    "calendar_invite": Stored(
        "kim.lee@example.com", "Kim Lee",
        "Invitation: Call about contract renewal @ Thu Jun 20, 2024 2pm - 2:30pm (UTC)",
        "You have been invited to the following event.\nCall about contract renewal",
        attachments=(("invite.ics", "text/calendar", 248),),
    ),
    "huge_attachment": Refused("attachment 'receipt-scan.pdf' is 2048 bytes; the limit is 1000 bytes", 1000),
    "outlook_reply": Stored(
        "john.smith@contoso.com", "Smith, John", "RE: [#1234] Refund for order 998",
        "Hi,\n\nThanks, the refund has not arrived yet. Could you check again?\n\nKind regards,\nJohn Smith",
        in_reply_to="hub-out-77@example.com",
        references=("first-0@contoso.com", "hub-out-77@example.com"),
        reply_tag="c1234",
        extra={"recipient": "support+c1234@example.com"},
    ),
    "gmail_reply": Stored(
        "jane.doe@gmail.com", "Jane Doe", "Re: Your ticket about the blue chair",
        "Yes, Tuesday morning works for the pickup.",
        in_reply_to="hub-out-80@example.com",
        references=("hub-out-80@example.com",),
    ),
    "dsn_bounce": Stored(
        "MAILER-DAEMON@mx.example.com", "Mail Delivery System", "Undelivered Mail Returned to Sender",
        "This is the mail system at host mx.example.com.",
        attachments=(("Re_ Your order.eml", "message/rfc822", 236),),
        auto_reply=True,
        bounce=(
            "hub-out-91@example.com", "nobody@customer.example", "5.1.1",
            "550 5.1.1 <nobody@customer.example>: Recipient address rejected: User unknown",
        ),
    ),
    "auto_reply": Stored(
        "lars@example.no", "Lars Nilsen", "Automatic reply: Your ticket #1301",
        "I am out of the office until 24 June",
        in_reply_to="hub-out-95@example.com",
        auto_reply=True,
    ),
    "vacation_bulk": Stored(
        "priya@example.in", "Priya Patel", "Re: Order 7781", "I am on vacation until July 1st.",
        reply_tag="c2001",
        auto_reply=True,
    ),
    "html_only_script": Stored(
        "desk@shop.example", "Promo Desk", "Problem with my account",
        "I cannot log in to my account since Monday.\n\nHelp page and this.",
    ),
    "inline_image": Stored(
        "olivia@example.co.uk", "Olivia Brown", "Error on checkout", "This is what I see at checkout:",
        attachments=(("screenshot.png", "image/png", 70),),
        extra={"inline_images": {"screenshot-1@example.co.uk": 0}},
    ),
    "no_message_id": Stored(
        "legacy-app@example.net", None, "Nightly report", "Nightly export finished with 3 warnings.",
        external_id="sha256:",
    ),
    "no_from": Refused("the message has no From header; there is no one to answer"),
    "empty_body": Stored("sam@example.com", "Sam Ode", "Call me back please", ""),
}  # fmt: skip


def test_every_fixture_has_a_case() -> None:
    assert sorted(p.stem for p in FIXTURES.glob("*.eml")) == sorted(CASES)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fixture_is_stored_or_refused_with_a_reason(name: str) -> None:
    raw = (FIXTURES / f"{name}.eml").read_bytes()
    case = CASES[name]
    if isinstance(case, Refused):
        with pytest.raises(IngestRefused) as refused:
            parse(raw, case.limit)
        assert str(refused.value) == case.reason
        return
    parsed = parse(raw)
    msg = parsed.message
    assert (msg.channel, msg.channel_kind, msg.identity_kind) == ("support-mail", "email", IdentityKind.EMAIL)
    assert (msg.sender, msg.sender_name, msg.thread.subject) == (case.sender, case.name, case.subject)
    assert msg.text.startswith(case.text_start) and (msg.text == "") == (case.text_start == "")
    assert parsed.full_text.startswith(msg.text)
    assert tuple((a.filename, a.content_type, len(a.data)) for a in msg.attachments) == case.attachments
    assert (msg.thread.in_reply_to, msg.thread.references) == (case.in_reply_to, case.references)
    assert msg.thread.reply_tag == case.reply_tag
    assert parsed.auto_reply is case.auto_reply
    bounce = parsed.bounce
    got = (
        None
        if bounce is None
        else (bounce.original_message_id, bounce.recipient, bounce.status, bounce.reason)
    )
    assert got == case.bounce
    if case.external_id == "sha256:":
        assert msg.external_id == "sha256:" + hashlib.sha256(raw).hexdigest()
    else:
        assert msg.external_id and "<" not in msg.external_id and not msg.external_id.startswith("sha256:")
    assert msg.received_at.tzinfo is not None
    assert msg.recipient == case.extra.get("recipient", msg.recipient)
    assert dict(parsed.inline_images) == case.extra.get("inline_images", {})
    for value in (
        msg.text,
        parsed.full_text,
        msg.sender_name or "",
        msg.thread.subject or "",
        msg.html or "",
    ):
        value.encode("utf-8")  # no surrogates: ingest would refuse them


def test_quoted_replies_are_collapsed_and_the_original_kept() -> None:
    parsed = parse((FIXTURES / "outlook_reply.eml").read_bytes())
    assert parsed.message.text.endswith("John Smith")
    assert "We have issued the refund" in parsed.full_text
    gmail = parse((FIXTURES / "gmail_reply.eml").read_bytes())
    assert "Can we pick up the chair" in gmail.full_text and "Jane Doe\n+44" in gmail.full_text


def test_html_is_sanitised() -> None:
    html = parse((FIXTURES / "html_only_script.eml").read_bytes()).message.html or ""
    for banned in ("<script", "document.cookie", "onclick", "onload", "onerror", "javascript:", "<style",
                   "<iframe", "<title"):  # fmt: skip
        assert banned not in html
    assert '<a href="https://shop.example/help" rel="noopener noreferrer nofollow">Help page</a>' in html
    assert '<img src="https://tracker.example/pixel.gif"' in html  # remote images stay; the inbox decides
    inline = parse((FIXTURES / "inline_image.eml").read_bytes()).message.html or ""
    assert 'src="cid:screenshot-1@example.co.uk"' in inline


def test_received_at_is_the_given_time_else_the_date_header() -> None:
    raw = (FIXTURES / "gmail_reply.eml").read_bytes()
    assert parse(raw).message.received_at == datetime(2024, 6, 15, 17, 31, 9, tzinfo=UTC)
    at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert parse(raw, received_at=at).message.received_at == at


def test_an_oversized_attachment_made_on_the_fly_refuses_the_message() -> None:
    raw = (FIXTURES / "huge_attachment.eml").read_bytes()
    assert [a.filename for a in parse(raw, 2048).message.attachments] == ["receipt-scan.pdf"]
    big = _with_attachment("big.bin", 3 * 1024 * 1024)
    with pytest.raises(IngestRefused, match=r"'big.bin' is 3145728 bytes; the limit is 1048576 bytes"):
        parse(big, 1024 * 1024)


def test_huge_headers_are_cut_not_fatal() -> None:
    refs = " ".join(f"<r{i}@example.com>" for i in range(500))
    raw = (
        b"From: a@example.com\r\nTo: support@example.com\r\n"
        + b"Received: from relay by mx; Mon, 1 Jan 2024 00:00:00 +0000\r\n" * 2000
        + b"Subject: " + b"x" * 1_000_000 + b"\r\n"
        + b"References: " + refs.encode() + b"\r\n\r\nbody\r\n"
    )  # fmt: skip
    parsed = parse(raw)
    assert parsed.message.text == "body"
    assert len(parsed.message.thread.subject or "") == 16_384
    references = parsed.message.thread.references
    assert (
        len(references) == 100 and references[0] == "r0@example.com" and references[-1] == "r499@example.com"
    )


def test_a_from_without_an_address_is_refused() -> None:
    with pytest.raises(IngestRefused, match="no address in its From header"):
        parse(b"From: Just A Name\r\nSubject: hi\r\n\r\nhello\r\n")


def _with_attachment(filename: str, size: int) -> bytes:
    data = base64.encodebytes(bytes(size)).replace(b"\n", b"\r\n")
    return (
        b"From: a@example.com\r\nMessage-ID: <big@example.com>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain\r\n\r\nsee file\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        + f'Content-Disposition: attachment; filename="{filename}"\r\n'.encode()
        + b"Content-Transfer-Encoding: base64\r\n\r\n" + data + b"--b--\r\n"
    )  # fmt: skip


# -- quotes and reply tags ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Thanks!\n\nOn Mon, 3 Jun 2024 at 10:12, Jane <j@example.com> wrote:\n> old\n> older", "Thanks!"),
        ("Thanks!\n\nOn Mon, 3 Jun 2024 at 10:12, Jane <j@example.com>\nwrote:\n\n> old", "Thanks!"),
        ("Danke\n\nAm 03.06.2024 um 10:12 schrieb Jane <j@example.com>:\n> alt", "Danke"),
        ("Fine.\n\n-----Original Message-----\nFrom: Support\nSent: Monday\nold text", "Fine."),
        (
            "Fine.\n\n________________________________\nFrom: Support\nSent: Mon\nTo: me\nSubject: x\n\nold",
            "Fine.",
        ),
        ("Fine.\n\n*From:* Support\n*Sent:* Mon\n*To:* me\n*Subject:* x\n\nold", "Fine."),
        ("Answer\n-- \nJane\nACME Ltd", "Answer"),
        ("> what size?\nLarge.\n> colour?\nBlue.", "Large.\nBlue."),
        # interleaved answers after an attribution are kept, only the quoted lines go
        ("On Mon, Jane wrote:\n> size?\nLarge.\n> colour?\nBlue.", "On Mon, Jane wrote:\nLarge.\nBlue."),
        # conservative: a From: line alone is not a reply header; nothing left -> the whole text
        ("From: my neighbour\nTo: me\nthe parcel is here", "From: my neighbour\nTo: me\nthe parcel is here"),
        ("> only a quote\n> nothing new", "> only a quote\n> nothing new"),
        ("-- \nonly a signature", "-- \nonly a signature"),
        ("", ""),
    ],
)
def test_collapse_quotes(text: str, expected: str) -> None:
    assert collapse_quotes(text) == expected


def test_html_to_text_marks_blockquotes_as_quotes() -> None:
    html = "<p>Yes <b>please</b></p><div>On Mon, Jane wrote:<blockquote>old<br>older</blockquote></div>"
    assert html_to_text(html) == "Yes please\n\nOn Mon, Jane wrote:\n> old\n> older"
    assert collapse_quotes(html_to_text(html)) == "Yes please"


@pytest.mark.parametrize(
    ("addresses", "tag"),
    [
        (["support+c1234@example.com"], "c1234"),
        (["support@example.com", "Support+conv-77@Example.com"], "conv-77"),
        (["support@example.com"], None),
        (["support+@example.com", "x+ok@example.com"], "ok"),
        (["support+bad tag@example.com"], None),
        (["support+" + "a" * 65 + "@example.com"], None),
        ([], None),
    ],
)
def test_reply_tag(addresses: list[str], tag: str | None) -> None:
    assert reply_tag(addresses) == tag


def test_reply_tag_prefers_delivered_to_then_to_then_cc() -> None:
    raw = (
        b"From: a@example.org\r\nCc: other+cc@example.net\r\nTo: support+c9@example.com\r\n"
        b"Delivered-To: support+c7@example.com\r\n\r\nhi\r\n"
    )
    parsed = parse(raw)
    assert (parsed.message.thread.reply_tag, parsed.message.recipient) == ("c7", "support+c7@example.com")


# -- fuzz -----------------------------------------------------------------------------------

_SPICE = [b"\r\n", b"\n\n", b"=?", b"?=", b"--", b"boundary=", b"\xff", b"\x00", b"\xc3", b":", b"<", b">",
          b"Content-Type: multipart/mixed", b"charset=", b"base64", b'"', b";"]  # fmt: skip


def _mutate(raw: bytes, rng: random.Random) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 12)):
        pos = rng.randrange(len(data) + 1)
        kind = rng.randrange(4)
        if kind == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:
            data[pos:pos] = rng.choice(_SPICE)
        elif kind == 2:
            del data[pos : pos + rng.randint(1, 40)]
        else:
            start = rng.randrange(len(data) + 1)
            data[pos:pos] = data[start : start + rng.randint(1, 80)]
    return bytes(data)


def test_fuzzed_fixtures_parse_or_are_refused_never_crash() -> None:
    rng = random.Random(4)
    fixtures = [p.read_bytes() for p in sorted(FIXTURES.glob("*.eml"))]
    outcomes = {"stored": 0, "refused": 0}
    for _ in range(600):
        raw = _mutate(rng.choice(fixtures), rng)
        try:
            parsed = parse(raw, 4096)
        except IngestRefused as exc:
            # A refusal names a real reason; none comes from the last-resort "could not be parsed".
            assert "could not be parsed" not in str(exc), (str(exc), raw)
            outcomes["refused"] += 1
            continue
        assert isinstance(parsed, ParsedEmail)
        for value in (
            parsed.message.text,
            parsed.full_text,
            parsed.message.html or "",
            parsed.message.sender,
        ):
            value.encode("utf-8")
        assert "\x00" not in parsed.message.text
        outcomes["stored"] += 1
    assert outcomes["stored"] > 300


@pytest.mark.parametrize(
    ("raw", "text", "files"),
    [
        # Message.get_payload() raises for some declared charsets (idna); leaves are read as bytes
        (b"From: a@b.c\r\nContent-Type: text/plain; charset=idna\r\n\r\n\xff\xfe", "ÿþ", []),
        (b"From: a@b.c\r\nContent-Type: text/plain; charset=utf-16\r\n\r\n\xff\xfeh\x00i\x00", "hi", []),
        (
            b"From: a@b.c\r\nContent-Type: text/plain; name=x\r\n"
            b"Content-Disposition: attachment; filename*=idna''%ff\r\n\r\nx",
            "",
            ["attachment"],
        ),
        (
            b"From: a@b.c\r\nContent-Type: message/rfc822\r\n\r\nSubject: a/b\xff\r\n\r\nx",
            "",
            ["a_b\xff.eml"],
        ),
    ],
)
def test_declared_charsets_that_cannot_decode(raw: bytes, text: str, files: list[str]) -> None:
    parsed = parse(raw)
    assert parsed.message.text == text
    assert [a.filename for a in parsed.message.attachments] == files


def _report(status_fields: str, original: str) -> bytes:
    return (
        "From: Mail Delivery Subsystem <mailer-daemon@mx.example.net>\r\nTo: support@example.com\r\n"
        "Subject: Delivery Status Notification (Delay)\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type="delivery-status"; boundary="r"\r\n\r\n'
        "--r\r\nContent-Type: text/plain\r\n\r\nStill trying.\r\n"
        f"--r\r\nContent-Type: message/delivery-status\r\n\r\n{status_fields}\r\n"
        f"{original}--r--\r\n"
    ).encode()


def test_bounce_variants() -> None:
    headers_part = (
        "--r\r\nContent-Type: text/rfc822-headers\r\n\r\nMessage-ID: <hub-out-5@example.com>\r\n\r\n"
    )
    delayed = parse(
        _report(
            "Reporting-MTA: dns; mx\r\n\r\nFinal-Recipient: rfc822; a@b.example\r\n"
            "Action: delayed\r\nStatus: 4.4.7\r\n",
            headers_part,
        )
    ).bounce
    assert delayed is not None and not delayed.failed
    assert (delayed.original_message_id, delayed.recipient, delayed.status, delayed.reason) == (
        "hub-out-5@example.com", "a@b.example", "4.4.7", "delivery status 4.4.7",
    )  # fmt: skip
    # no original part: the Original-Message-ID field names it; the first failed recipient is reported
    failed = parse(
        _report(
            "Original-Message-ID: <hub-out-6@example.com>\r\n\r\nFinal-Recipient: rfc822; ok@x.example\r\n"
            "Action: delivered\r\nStatus: 2.0.0\r\n\r\nFinal-Recipient: rfc822; gone@x.example\r\n"
            "Action: failed\r\nStatus: 5.2.1\r\nDiagnostic-Code: smtp; 550 mailbox disabled\r\n",
            "",
        )
    ).bounce
    assert failed is not None and failed.failed
    assert (failed.original_message_id, failed.recipient, failed.status, failed.reason) == (
        "hub-out-6@example.com", "gone@x.example", "5.2.1", "550 mailbox disabled",
    )  # fmt: skip
    assert parse((FIXTURES / "gmail_reply.eml").read_bytes()).bounce is None
