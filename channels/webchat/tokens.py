"""Signed web-chat visitor tokens and identity verification.

A visitor token is ``v1.<payload>.<signature>``: base64url JSON (visitor id, display name, expiry)
and base64url HMAC-SHA256 of it with the hub's secret. It grants exactly one thing: the visitor's
own conversation on this channel.

Identity verification follows Intercom and Chatwoot: the embedding site, which knows who is logged
in, passes ``user_id`` and ``user_hash = hex(HMAC-SHA256(identity_secret, user_id))``. A valid hash
makes the visitor id derive from the user id, so the same person gets the same history on every
device; an invalid one is refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any


class TokenError(ValueError):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Visitor:
    id: str
    name: str | None
    email: str | None
    verified: bool
    expires: int


def new_visitor_id() -> str:
    return "v-" + secrets.token_urlsafe(16)


def verified_visitor_id(user_id: str) -> str:
    # Hashed so any user id (e-mail, UUID, with spaces...) becomes a safe, fixed-length identity.
    return "u-" + hashlib.sha256(user_id.encode()).hexdigest()[:32]


def user_hash(identity_secret: bytes, user_id: str) -> str:
    return hmac.new(identity_secret, user_id.encode(), hashlib.sha256).hexdigest()


def check_user_hash(identity_secret: bytes, user_id: str, given: str) -> bool:
    return hmac.compare_digest(user_hash(identity_secret, user_id), given.lower())


class TokenSigner:
    def __init__(self, secret: bytes, ttl_seconds: int) -> None:
        self._secret = secret
        self.ttl = ttl_seconds

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, b"webchat-visitor." + payload.encode(), hashlib.sha256).digest())

    def issue(self, visitor_id: str, *, name: str | None, email: str | None, verified: bool) -> str:
        body: dict[str, Any] = {"vid": visitor_id, "exp": int(time.time()) + self.ttl, "ver": verified}
        if name:
            body["name"] = name
        if email:
            body["email"] = email
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"v1.{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> Visitor:
        try:
            version, payload, signature = token.split(".")
        except ValueError:
            raise TokenError("malformed visitor token") from None
        if version != "v1" or not hmac.compare_digest(self._sign(payload), signature):
            raise TokenError("visitor token signature is invalid")
        try:
            body = json.loads(_unb64(payload))
        except ValueError:
            raise TokenError("malformed visitor token") from None
        if not isinstance(body, dict) or int(body.get("exp", 0)) < time.time():
            raise TokenError("visitor token expired; start a new chat session")
        return Visitor(
            id=str(body["vid"]),
            name=body.get("name"),
            email=body.get("email"),
            verified=bool(body.get("ver")),
            expires=int(body["exp"]),
        )
