"""Identity normalisation: one spelling per address, so one address is one contact.

* email: the bare address, lower-cased (RFC 5321 allows case-sensitive local parts; no real
  mailbox provider uses them, and treating them as distinct splits customers in two).
* phone: E.164 via ``phonenumbers``; national numbers use the configured default region.
* jid: the bare JID (RFC 7622 §3), resource dropped, local part and domain lower-cased.
* webchat: the visitor id issued by the web-chat channel, unchanged.
"""

from __future__ import annotations

import re
from email.utils import parseaddr

import phonenumbers

from hub.model import IdentityKind

_VISITOR_ID = re.compile(r"^[A-Za-z0-9:._@-]{1,200}$")


class InvalidAddress(ValueError):
    """The address cannot name a contact; the message carrying it is refused with this reason."""


def normalise_email(value: str) -> str:
    _name, address = parseaddr(value)
    address = address.strip().lower()
    local, at, domain = address.rpartition("@")
    if not at or not local or "." not in domain or any(c.isspace() for c in address):
        raise InvalidAddress(f"not an email address: {value!r}")
    return address


def normalise_phone(value: str, default_region: str | None = None) -> str:
    try:
        number = phonenumbers.parse(value, default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidAddress(f"not a phone number: {value!r} ({exc})") from None
    if not phonenumbers.is_possible_number(number):
        raise InvalidAddress(f"not a possible phone number: {value!r}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_jid(value: str) -> str:
    bare = value.strip().split("/", 1)[0].lower()
    local, at, domain = bare.rpartition("@")
    if not domain or (at and not local) or any(c.isspace() for c in bare):
        raise InvalidAddress(f"not a JID: {value!r}")
    return bare


def normalise_visitor(value: str) -> str:
    if not _VISITOR_ID.match(value):
        raise InvalidAddress(f"not a web-chat visitor id: {value!r}")
    return value


def normalise(kind: IdentityKind, value: str, *, default_region: str | None = None) -> str:
    if kind is IdentityKind.EMAIL:
        return normalise_email(value)
    if kind is IdentityKind.PHONE:
        return normalise_phone(value, default_region)
    if kind is IdentityKind.JID:
        return normalise_jid(value)
    return normalise_visitor(value)
