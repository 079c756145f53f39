"""Identity normalisation: one spelling per address."""

from __future__ import annotations

import pytest

from hub.identity import InvalidAddress, normalise
from hub.model import IdentityKind

E, P, J, W = IdentityKind.EMAIL, IdentityKind.PHONE, IdentityKind.JID, IdentityKind.WEBCHAT


@pytest.mark.parametrize(
    ("kind", "raw", "region", "expected"),
    [
        (E, "Alice@Example.COM", None, "alice@example.com"),
        (E, '"Alice Liddell" <Alice@Example.com>', None, "alice@example.com"),
        (E, "  bob+tag@mail.example.org  ", None, "bob+tag@mail.example.org"),
        (P, "+44 20 7946 0958", None, "+442079460958"),
        (P, "(020) 7946 0958", "GB", "+442079460958"),
        (P, "+1 (415) 555-2671", None, "+14155552671"),
        (P, "004930123456", "DE", "+4930123456"),
        (J, "Juliet@Capulet.example/balcony", None, "juliet@capulet.example"),
        (J, "romeo@montague.example", None, "romeo@montague.example"),
        (J, "conference.example", None, "conference.example"),
        (W, "v-AbC_123", None, "v-AbC_123"),
    ],
)
def test_normalise(kind: IdentityKind, raw: str, region: str | None, expected: str) -> None:
    assert normalise(kind, raw, default_region=region) == expected


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        (E, "not an address"),
        (E, "@example.com"),
        (E, "alice@localhost"),
        (P, "hello"),
        (P, "12"),
        (P, "020 7946 0958"),  # national number with no default region
        (J, "@example.com"),
        (J, "a b@example.com"),
        (W, "has spaces"),
        (W, ""),
    ],
)
def test_invalid_addresses_are_refused_with_a_reason(kind: IdentityKind, raw: str) -> None:
    with pytest.raises(InvalidAddress) as info:
        normalise(kind, raw)
    assert str(info.value)
