"""What every wire format shares: the request base model, ids, and the error a cross-field rule raises.

This module imports nothing else from the package.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict

__all__ = ["ParamError", "WireModel", "joined_text", "new_id", "now", "random_hex"]


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

    def set_wire_body(self, body: bytes | dict[str, Any]) -> None:
        """The JSON this request was validated from (bytes, or the object): see ``wire_body``.

        Only for a request that is not changed afterwards: the wire body is forwarded in its place.
        """
        self._set_private("wire", body)

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


def joined_text(content: str | Iterable[Any] | None, part: type[Any]) -> str:
    """A content field as plain text: a string as it is, the ``text`` of its ``part`` items joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.text for p in content if isinstance(p, part))
