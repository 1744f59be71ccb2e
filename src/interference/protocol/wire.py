"""What every wire format shares: the request base model, ids, and the error a cross-field rule raises.

This module imports nothing else from the package.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

__all__ = ["ParamError", "WireModel", "joined_text", "new_id", "now", "random_hex", "with_model"]


def random_hex(digits: int = 32) -> str:
    """``digits`` random hex digits for an id (at most 32). Ids name objects and are no secret (a stored
    response is found only with its owner's key), so they come from the process's pseudo-random
    generator, which is reseeded in a forked child: no system call per id."""
    return f"{random.getrandbits(128):032x}"[:digits]


def new_id(prefix: str) -> str:
    """An OpenAI-style object id such as ``chatcmpl-3f2a…``."""
    return f"{prefix}-{random_hex(24)}"


def now() -> int:
    """Seconds since the epoch, as OpenAI's ``created`` fields carry them."""
    return int(time.time())


class ParamError(ValueError):
    """A cross-field rule broken by one named parameter (becomes a 400 naming ``param``)."""

    def __init__(self, message: str, *, param: str) -> None:
        super().__init__(message)
        self.param = param


class WireModel(BaseModel):
    """Base of every request model: strict types, unknown fields kept aside.

    What the server attaches to a request (``set_tenant``, ``set_wire_body``) lives in pydantic's
    dict of private values, created on first use, and not in declared ``PrivateAttr``s: a declared
    one is initialised on every nested model as it is validated (hundreds per agent-sized request,
    a third of its parsing time).
    """

    model_config = ConfigDict(extra="allow", strict=True)

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})

    @property
    def tenant(self) -> str:
        """Whose request this is (the API key's name), set by the server, never read from the wire.

        The local engine takes waiting requests of different tenants in turn.
        """
        tenant = self._private("tenant")
        return tenant if isinstance(tenant, str) else ""

    def set_tenant(self, tenant: str) -> None:
        self._set_private("tenant", tenant)

    def set_wire_body(self, body: bytes | dict[str, Any], raw: bytes | None = None) -> None:
        """The JSON this request was validated from (bytes, or the object): see ``wire_body``; and
        the bytes that object was parsed from, when they are at hand: see ``wire_bytes``.

        Only for a request that is not changed afterwards: the wire body is forwarded in its place.
        """
        self._set_private("wire", body)
        if raw is not None:
            self._set_private("raw", raw)

    def wire_bytes(self, model: str) -> bytes | None:
        """The request's bytes as sent with the top-level ``model`` replaced (see ``with_model``), or
        None. Dumping a large request again costs more than parsing it: its non-ASCII text must be
        encoded anew."""
        raw, wire = self._private("raw"), self._private("wire")
        if not isinstance(raw, bytes) or not isinstance(wire, dict):
            return None
        return with_model(raw, wire.get("model"), model)

    def wire_field(self, name: str) -> Any:
        """A top-level field of the JSON object this request was validated from, as sent (None when
        absent, or when the request was validated from bytes): read-only, never to be changed."""
        wire = self._private("wire")
        return wire.get(name) if isinstance(wire, dict) else None

    def wire_body(self) -> dict[str, Any] | None:
        """The request as a new top-level JSON object, as sent; None when it was not kept.

        It holds what ``model_dump(exclude_unset=True, by_alias=True)`` gives, without walking the
        models: extras included, aliases as sent (an integer sent for a float field stays an
        integer). Bytes that orjson does not take (pydantic's parser is laxer on lone surrogates
        and integers past 64 bits) give None.
        """
        wire = self._private("wire")
        if isinstance(wire, dict):
            return dict(wire)
        if isinstance(wire, bytes):
            try:
                value = orjson.loads(wire)
            except orjson.JSONDecodeError:
                return None
            return value if isinstance(value, dict) else None
        return None

    def _private(self, name: str) -> Any:
        private = self.__pydantic_private__
        return private.get(name) if private else None

    def _set_private(self, name: str, value: Any) -> None:
        private = self.__pydantic_private__
        if private is None:
            object.__setattr__(self, "__pydantic_private__", {name: value})
        else:
            private[name] = value


_MODEL_KEY = b'"model"'
_WS = rb"[ \t\r\n]*"
_STRING = rb'("(?:[^"\\]|\\.)*")'
_STRING_VALUE = re.compile(_WS + b":" + _WS + _STRING)
# The document's first member, or its last (the final "}" closes the top-level object): either way
# the top-level key itself, found without reading the bytes between.
_FIRST_MEMBER = re.compile(_WS + rb"\{" + _WS + _MODEL_KEY + _WS + b":" + _WS + _STRING)
_LAST_MEMBER = re.compile(rb"," + _WS + _MODEL_KEY + _WS + b":" + _WS + _STRING + _WS + rb"\}" + _WS + rb"\Z")
_TAIL_BYTES = 512  # how far from the end the last member is looked for


def with_model(raw: bytes, sent: object, model: str) -> bytes | None:
    """``raw``, a JSON object whose top-level ``"model"`` is the string ``sent``, with that value
    replaced by ``model``; the rest of the bytes as they were.

    ``raw`` has been parsed as JSON, so every ``"model"`` in it whose quotes are not escaped is a
    whole string token: a key or a value. That token is the top-level key when it is the object's
    first member, or its last one (followed by the final ``}``); those are found at either end. Failing
    that, when ``"model"`` occurs once in the whole document, followed by a colon and a string. The
    value replaced must equal ``sent``; otherwise None, and the caller writes the object anew.

    A key given twice is ambiguous JSON: the first or the last member whose value is ``sent`` (what
    the request was validated with) is replaced.
    """
    if not isinstance(sent, str):
        return None
    for find in (_first_member, _last_member, _only_member):  # the cheap ones first
        value = find(raw)
        if value is not None and _is_string(value.group(1), sent):
            return b"".join((raw[: value.start(1)], orjson.dumps(model), memoryview(raw)[value.end(1) :]))
    return None


def _first_member(raw: bytes) -> re.Match[bytes] | None:
    return _FIRST_MEMBER.match(raw)


def _last_member(raw: bytes) -> re.Match[bytes] | None:
    return _LAST_MEMBER.search(raw, max(0, len(raw) - _TAIL_BYTES))


def _only_member(raw: bytes) -> re.Match[bytes] | None:
    """The key and string value of the one ``"model"`` in the document; None if not once, or not so."""
    at = raw.find(_MODEL_KEY)
    if at < 0 or raw.find(_MODEL_KEY, at + len(_MODEL_KEY)) >= 0:
        return None
    return _STRING_VALUE.match(raw, at + len(_MODEL_KEY))


def _is_string(token: bytes, text: str) -> bool:
    try:
        return bool(orjson.loads(token) == text)
    except orjson.JSONDecodeError:
        return False


def joined_text(content: str | Iterable[Any] | None, part: type[Any]) -> str:
    """A content field as plain text: a string as it is, the ``text`` of its ``part`` items joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, part))
