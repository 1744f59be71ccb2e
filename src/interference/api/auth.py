"""Who is asking: the key a request presents, and which paths need none."""

from __future__ import annotations

from starlette.types import Scope

__all__ = ["PUBLIC_PATHS", "is_public", "presented_key"]

# Paths any caller may reach: probes and metrics scrapers carry no key, and the chat page is public
# (its API calls carry the key the person typed in).
PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics", "/"})
PUBLIC_PREFIXES = ("/static/",)


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)


def presented_key(scope: Scope) -> str:
    """``Authorization: Bearer KEY``, or ``x-api-key: KEY`` (Anthropic's clients); empty when neither."""
    headers: dict[bytes, bytes] = dict(scope["headers"])
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get(b"x-api-key", b"").decode("latin-1").strip()
