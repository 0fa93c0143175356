"""Short-lived tokens minted by the emulators' token endpoints."""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Token:
    provider: str
    value: str
    expires_at: float  # time.monotonic() deadline for *using* the token
    single_use: bool
    attrs: dict[str, Any] = field(default_factory=dict)
    uses: int = 0


class TokenStore:
    def __init__(self) -> None:
        self._tokens: dict[str, Token] = {}

    def mint(self, provider: str, ttl_seconds: float, *, single_use: bool, **attrs: Any) -> Token:
        self._purge()
        if provider == "elevenlabs":
            value = "sutkn_" + secrets.token_hex(24)
        else:
            # Opaque and JWT-shaped like the real one; nothing reads its contents.
            header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=").decode()
            body = base64.urlsafe_b64encode(
                json.dumps({"emu": secrets.token_hex(8), "exp": int(time.time() + ttl_seconds)}).encode()
            )
            value = f"{header}.{body.rstrip(b'=').decode()}.{secrets.token_urlsafe(32)}"
        tok = Token(provider, value, time.monotonic() + ttl_seconds, single_use, dict(attrs))
        self._tokens[value] = tok
        return tok

    def consume(self, provider: str, value: str | None, **required: Any) -> Token | None:
        """The token if it is known, unexpired, unused (when single-use) and of ``provider`` with the
        ``required`` attributes; it is then marked used (single-use tokens are removed)."""
        if not value:
            return None
        tok = self._tokens.get(value)
        if tok is None or tok.provider != provider:
            return None
        if time.monotonic() > tok.expires_at:
            self._tokens.pop(value, None)
            return None
        if any(tok.attrs.get(k) != v for k, v in required.items()):
            return None
        tok.uses += 1
        if tok.single_use:
            self._tokens.pop(value, None)
        return tok

    def _purge(self) -> None:
        if len(self._tokens) < 1024:
            return
        now = time.monotonic()
        for k in [k for k, t in self._tokens.items() if now > t.expires_at]:
            del self._tokens[k]
