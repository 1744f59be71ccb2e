"""Access control as pure ASGI middleware: keys, per-key limits, and one ledger row per request.

For each API request it finds the caller (an ``--api-key`` key, a named key of the keys file, or
nobody when no auth is configured), refuses what the key may not do (401, 403), admits generating
requests against the key's limits (429, or 503 when the shared store is down), adds the
``x-ratelimit-*`` headers, and when the response is over settles the token reservation with the real
usage and writes the ledger entry. The serving code reports usage on the request's ``RequestRecord``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    AuthenticationFailed,
    InterferenceError,
    ModelNotAllowed,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
)
from ..keys import KeySpec, KeyTable, Ledger, LedgerEntry, Limits, Ticket, hash_key
from ..keys.ledger import now_iso
from ..keys.limits import LimitExceeded
from .auth import is_public, presented_key
from .errors import response_for
from .request_log import RequestRecord, route_of

__all__ = [
    "PARSED_BODY_KEY",
    "RATE_LIMIT_HEADERS",
    "AccessMiddleware",
    "Caller",
    "KeyStore",
    "caller_of",
    "is_admin",
]

logger = logging.getLogger(__name__)

_STATE_KEY = "interference_caller"
PARSED_BODY_KEY = "interference_parsed_body"
# The routes that generate (and so count against rpm and tpm), with and without the /v1 prefix.
GENERATING = frozenset(
    p + s
    for p in ("/v1", "")
    for s in ("/chat/completions", "/completions", "/embeddings", "/responses", "/messages")
)
# Routes that read the model but generate nothing: the model list of the key applies, limits do not.
MODEL_ONLY = frozenset({"/v1/messages/count_tokens", "/messages/count_tokens"})
_ADMIN_PATH = re.compile(r"^(/v1)?/(usage|models/.+/(load|unload))$")
# Tokens reserved for the answer when the request sets no max_tokens.
DEFAULT_COMPLETION_RESERVE = 1024
REFUSED = frozenset({401, 403, 429})
POLL_SECONDS = 1.0
RATE_LIMIT_HEADERS = [
    f"x-ratelimit-{what}-{kind}"
    for kind in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request: ``spec`` None is an ``--api-key`` key, or anyone when no auth is configured."""

    spec: KeySpec | None = None
    # Who owns what this caller stores (responses): a named key by its name, an --api-key key by its
    # hash, and "" for everyone when auth is off.
    owner: str = ""

    @property
    def name(self) -> str | None:
        return self.spec.name if self.spec else None

    @property
    def is_admin(self) -> bool:
        # Operator keys (--api-key) and an open server have every right; named keys only with admin = true.
        return self.spec is None or self.spec.admin


def caller_of(scope: Scope) -> Caller | None:
    caller = scope.get("state", {}).get(_STATE_KEY)
    return caller if isinstance(caller, Caller) else None


def is_admin(request: Request) -> bool:
    """Whether this request's key may use the admin routes (usage, model load and unload)."""
    caller = caller_of(request.scope)
    return caller is None or caller.is_admin


@dataclass(slots=True)
class KeyStore:
    """The current keys file, reloaded by ``watch`` when its modification time changes."""

    path: str | None
    table: KeyTable = field(default_factory=KeyTable)
    _stamp: float | None = None

    def load(self) -> None:
        if self.path is None:
            return
        stamp = os.stat(self.path).st_mtime_ns
        self.table = KeyTable.load(self.path)
        self._stamp = stamp

    async def watch(self) -> None:
        """Poll the file's mtime every second; a broken edit keeps the previous keys."""
        from ..keys import KeyFileError

        while self.path is not None:
            await asyncio.sleep(POLL_SECONDS)
            try:
                stamp = os.stat(self.path).st_mtime_ns
                if stamp != self._stamp:
                    self._stamp = stamp
                    self.table = await asyncio.to_thread(KeyTable.load, self.path)
                    logger.info("keys file reloaded: %d keys", len(self.table.specs))
            except (OSError, KeyFileError) as exc:
                logger.warning("keys file not reloaded, the previous keys stay: %s", exc)


def _reserve(data: object, size: int, *, generates: bool = True) -> tuple[str | None, int]:
    """The model asked for and the tokens to reserve: prompt estimate (bytes / 4), plus max_tokens
    when the route generates (embeddings produce no tokens, so they reserve the prompt only)."""
    if not isinstance(data, dict):
        return None, size // 4 + 1
    model = data.get("model")
    limit = DEFAULT_COMPLETION_RESERVE if generates else 0
    for name in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        value = data.get(name)
        if generates and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            limit = value
            break
    return (model if isinstance(model, str) else None), size // 4 + 1 + limit


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    chunks: list[bytes] = []
    messages: list[Message] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks), messages


class AccessMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_keys: list[str],
        keys: KeyStore,
        limits: Limits,
        ledger: Ledger | None,
        canonical: Callable[[str], str],
    ) -> None:
        self.app = app
        self._operator = [hash_key(k) for k in api_keys]
        self._keys = keys
        self._limits = limits
        self._ledger = ledger
        self._canonical_of = canonical

    @property
    def _auth_on(self) -> bool:
        return bool(self._operator) or self._keys.path is not None

    def _identify(self, key: str) -> Caller | None:
        given = hash_key(key)
        operator = False
        for digest in self._operator:
            operator |= secrets.compare_digest(given, digest)
        spec = self._keys.table.find(key)
        if operator:
            return Caller(owner=f"operator:{given.hex()[:32]}")
        return Caller(spec, owner=f"key:{spec.name}") if spec is not None else None

    def _canonical(self, model: str) -> str:
        try:
            return self._canonical_of(model)
        except InterferenceError:  # an unknown model: the route answers 404 if the key may ask
            return model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        state = scope.setdefault("state", {})
        status = 500
        caller: Caller | None = Caller()
        model: str | None = None
        ticket: Ticket | None = None
        held: tuple[str, object] | None = None
        try:
            if self._auth_on:
                key = presented_key(scope)
                caller = self._identify(key) if key else None
                if caller is None:
                    message = "Incorrect API key provided." if key else "You didn't provide an API key."
                    status = 401
                    await response_for(scope, AuthenticationFailed(message))(scope, receive, send)
                    return
            assert caller is not None
            state[_STATE_KEY] = caller
            path = scope["path"]
            if _ADMIN_PATH.match(path) and not caller.is_admin:
                status = 403
                await response_for(scope, PermissionDenied("This route needs an admin key."))(
                    scope, receive, send
                )
                return
            spec = caller.spec
            if spec is not None and scope["method"] == "POST" and (path in GENERATING or path in MODEL_ONLY):
                body, messages = await _read_body(receive)
                try:
                    data = orjson.loads(body)
                except orjson.JSONDecodeError:
                    data = None
                else:
                    # The route validates this object instead of parsing the same bytes again.
                    state[PARSED_BODY_KEY] = (body, data)
                model, reserve = _reserve(data, len(body), generates=not path.endswith("/embeddings"))
                if model is not None and not spec.allows(model, self._canonical(model)):
                    status = 403
                    await response_for(scope, ModelNotAllowed(model))(scope, receive, send)
                    return
                receive = _replay(messages, receive)
                if path in GENERATING:
                    try:
                        held = (spec.name, await self._limits.hold(spec.name, spec.max_concurrent))
                        if spec.is_limited:
                            ticket = await self._limits.admit(
                                spec.name, rpm=spec.rpm, tpm=spec.tpm, reserve=reserve
                            )
                    except (RateLimited, ServiceUnavailable) as exc:
                        status = exc.status
                        response = response_for(scope, exc)
                        if isinstance(exc, LimitExceeded):
                            response.raw_headers.extend(exc.quota.headers())
                        await response(scope, receive, send)
                        return
            extra = ticket.quota.headers() if ticket is not None else []

            async def send_with_headers(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                    if extra:
                        message["headers"] = [*message.get("headers", ()), *extra]
                await send(message)

            await self.app(scope, receive, send_with_headers)
        finally:
            if held is not None:
                await self._limits.release(*held)
            record = state.get("interference_request")
            usage = record.usage if isinstance(record, RequestRecord) else None
            if self._ledger is not None:
                self._write(scope, caller, record, status, started, model)
            if ticket is not None:
                used = usage.prompt_tokens + usage.completion_tokens if usage else 0
                # Shielded: a cancelled request (a disconnect) still settles its reservation.
                await asyncio.shield(self._limits.settle(ticket, tokens=used, refused=status in REFUSED))

    def _write(
        self,
        scope: Scope,
        caller: Caller | None,
        record: object,
        status: int,
        started: float,
        model: str | None,
    ) -> None:
        assert self._ledger is not None
        usage = record.usage if isinstance(record, RequestRecord) else None
        ttft = record.ttft if isinstance(record, RequestRecord) else None
        if isinstance(record, RequestRecord) and record.model:
            model = record.model
        self._ledger.record(
            LedgerEntry(
                time=now_iso(),
                key_name=caller.name if caller else None,
                model=model,
                route=route_of(scope),
                status=status,
                prompt_tokens=usage.prompt_tokens if usage else 0,
                completion_tokens=usage.completion_tokens if usage else 0,
                cached_tokens=usage.cached_tokens if usage else 0,
                ttft_ms=round(ttft * 1000, 1) if ttft is not None else None,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
        )


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that hands out the already-read body first, then the real one (disconnects)."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
