"""Timeline text: plain text from HTML, and quoted replies and signatures collapsed.

Conservative by contract: a rule cuts only at a line it recognises, and a cut that would leave nothing
returns the whole text instead. The full original is kept beside the collapsed text by the parser.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

# "On Mon, 3 Jun 2024 at 10:12, Jane <jane@example.com> wrote:" (Gmail, Apple Mail, Thunderbird) and
# the same attribution in a few languages; mailers wrap it, so it is matched over up to three lines.
_ATTRIBUTION = re.compile(
    r"^(On\s.{1,300}\swrote|Am\s.{1,300}\sschrieb(\s.{1,300})?|Le\s.{1,300}\sa\s+écrit|El\s.{1,300}\sescribió)\s*:$",
    re.IGNORECASE | re.DOTALL,
)
# Outlook and Outlook Express: "-----Original Message-----" and its translations.
_ORIGINAL_MESSAGE = re.compile(
    r"^\s*-{2,}\s*(Original Message|Ursprüngliche Nachricht|Message d'origine|Mensaje original)\s*-{2,}\s*$",
    re.IGNORECASE,
)
# Outlook's quoted header block: From: ... Sent: ... To: ... Subject: (plain text of bold HTML keeps "*").
_FIELD = r"^\s*\*?{}\s*:"
_BLOCK_FROM = re.compile(_FIELD.format("(From|Von|De)"), re.IGNORECASE)
_BLOCK_SENT = re.compile(_FIELD.format("(Sent|Gesendet|Envoyé)"), re.IGNORECASE)
_BLOCK_SUBJECT = re.compile(_FIELD.format("(Subject|Betreff|Objet)"), re.IGNORECASE)
_RULE = re.compile(r"^\s*_{10,}\s*$")
# RFC 3676 §4.3 signature separator; many mailers strip its trailing space.
_SIGNATURE = re.compile(r"^--\s?$")


def collapse_quotes(text: str) -> str:
    """The new part of a reply: quoted history, reply headers and the signature removed."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    cut = _reply_header_at(lines)
    if cut is not None:
        lines = lines[:cut]
    lines = [line for line in lines if not line.startswith(">")]
    for i, line in enumerate(lines):
        if _SIGNATURE.match(line):
            lines = lines[:i]
            break
    collapsed = re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in lines)).strip()
    return collapsed or text.strip()


def _reply_header_at(lines: list[str]) -> int | None:
    """Index of the first line that starts a quoted reply, or None."""
    for i, line in enumerate(lines):
        if _ORIGINAL_MESSAGE.match(line):
            return i
        if _BLOCK_FROM.match(line) and _outlook_block(lines[i + 1 : i + 8]):
            return i - 1 if i and _RULE.match(lines[i - 1]) else i
        for span in (1, 2, 3):
            if _ATTRIBUTION.match(" ".join(lines[i : i + span]).strip()):
                # Interleaved answers after the quote are kept: cut only if nothing but quotes follows.
                rest = [x for x in lines[i + span :] if x.strip()]
                return i if all(x.startswith(">") for x in rest) else None
    return None


def _outlook_block(following: list[str]) -> bool:
    return any(_BLOCK_SENT.match(x) for x in following) and any(_BLOCK_SUBJECT.match(x) for x in following)


_BLOCK_TAGS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "hr"}
_SKIP_TAGS = {"script", "style", "head", "title"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[str] = [""]
        self.skipping = 0
        self.quote_depth = 0
        self.space_pending = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP_TAGS:
            self.skipping += 1
        elif tag == "blockquote":
            self.quote_depth += 1
            self.lines.append("")
        elif tag in _BLOCK_TAGS:
            self.lines.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skipping = max(0, self.skipping - 1)
        elif tag == "blockquote":
            self.quote_depth = max(0, self.quote_depth - 1)
            self.lines.append("")
        elif tag in _BLOCK_TAGS:
            self.lines.append("")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        words = " ".join(data.split())
        space = self.space_pending or data[:1].isspace()
        self.space_pending = data[-1:].isspace()
        if not words:
            return
        if not self.lines[-1]:
            # A line inside <blockquote> is marked as quoted, so collapse_quotes treats it as such.
            self.lines[-1] = "> " * self.quote_depth
        elif space:
            self.lines[-1] += " "
        self.lines[-1] += words


def html_to_text(html: str) -> str:
    """Readable plain text of an HTML body: block elements become lines, quotes get "> " marks."""
    extractor = _TextExtractor()
    try:
        extractor.feed(html)
        extractor.close()
    except Exception:  # HTMLParser has raised on malformed markup in some Python versions.
        return " ".join(re.sub(r"<[^>]*>", " ", html).split())
    text = "\n".join(line.rstrip() for line in extractor.lines)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
