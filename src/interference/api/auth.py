"""API-key authentication as pure ASGI middleware (off unless keys are configured)."""

from __future__ import annotations

import hashlib
import secrets

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import AuthenticationFailed
from .errors import response_for

__all__ = ["ApiKeyMiddleware"]

# Paths any caller may reach: probes and metrics scrapers carry no key, and the chat page is public
# (its API calls carry the key the person typed in).
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics", "/"})
PUBLIC_PREFIXES = ("/static/",)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


class ApiKeyMiddleware:
    """Accepts ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` (Anthropic's clients) matching a key.

    A refusal is a 401 in the envelope of the route asked (OpenAI's, or Anthropic's on its routes).
    """

    def __init__(self, app: ASGIApp, *, keys: list[str]) -> None:
        self.app = app
        self._digests = [_digest(k) for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or _is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        key = (
            auth[7:].strip()
            if auth.lower().startswith("bearer ")
            else headers.get(b"x-api-key", b"").decode()
        )
        given = _digest(key)
        if key and any(secrets.compare_digest(given, d) for d in self._digests):
            await self.app(scope, receive, send)
            return
        message = "Incorrect API key provided." if key else "You didn't provide an API key."
        response = response_for(scope, AuthenticationFailed(message))
        await response(scope, receive, send)
