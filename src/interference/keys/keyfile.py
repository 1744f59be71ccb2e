"""The keys file: named API keys, stored only as SHA-256 hashes, each with its own limits.

One ``[[keys]]`` table per key::

    [[keys]]
    name = "alice"
    key_sha256 = "9f86d0…"
    models = ["gpt-4o-mini"]   # ids and aliases; omitted: all models
    rpm = 60                   # requests per minute; omitted: no limit
    tpm = 100000               # prompt + completion tokens per minute
    max_concurrent = 4
    admin = false
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["KeyFileError", "KeySpec", "KeyTable", "add_key", "hash_key", "new_key"]

KEY_PREFIX = "sk-itf-"


class KeyFileError(Exception):
    """The keys file is missing or invalid; the message names the entry."""


class KeySpec(BaseModel):
    """One named key and its limits (None: no limit)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Annotated[str, Field(min_length=1)]
    key_sha256: str
    models: tuple[str, ...] | None = None
    rpm: Annotated[int, Field(ge=1)] | None = None
    tpm: Annotated[int, Field(ge=1)] | None = None
    max_concurrent: Annotated[int, Field(ge=1)] | None = None
    admin: bool = False

    @field_validator("key_sha256")
    @classmethod
    def _hex_digest(cls, v: str) -> str:
        v = v.strip().lower()
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError("must be 64 hex digits (the SHA-256 of the key)")
        return v

    @property
    def is_limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None

    def allows(self, *names: str) -> bool:
        """Whether any of these names (the id asked for, the model it resolves to) is in the list."""
        return self.models is None or any(n in self.models for n in names)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keys: tuple[KeySpec, ...] = ()


def hash_key(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class KeyTable:
    """The keys of one version of the file; ``find`` compares every hash in constant time."""

    specs: tuple[KeySpec, ...] = ()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> KeyTable:
        try:
            with open(path, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise KeyFileError(f"keys file not found: {path}") from None
        except tomllib.TOMLDecodeError as exc:
            raise KeyFileError(f"keys file {path} is not valid TOML: {exc}") from None
        try:
            parsed = _File.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in err["loc"])
            raise KeyFileError(f"invalid entry '{where}' in keys file {path}: {err['msg']}") from None
        names = [s.name for s in parsed.keys]
        for name in names:
            if names.count(name) > 1:
                raise KeyFileError(f"keys file {path}: the name '{name}' is used twice")
        return cls(parsed.keys)

    def find(self, key: str) -> KeySpec | None:
        given = hash_key(key)
        found = None
        for spec in self.specs:  # no early exit: the time taken does not depend on which key matched
            if secrets.compare_digest(given, bytes.fromhex(spec.key_sha256)):
                found = spec
        return found


def _toml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def add_key(
    path: str | os.PathLike[str],
    name: str,
    *,
    rpm: int | None = None,
    tpm: int | None = None,
    models: tuple[str, ...] | None = None,
    max_concurrent: int | None = None,
    admin: bool = False,
) -> str:
    """Append a new key's entry to the file (created if missing) and return the key itself."""
    file = Path(path)
    existing = KeyTable.load(file) if file.exists() else KeyTable()
    if any(s.name == name for s in existing.specs):
        raise KeyFileError(f"keys file {file}: a key named '{name}' exists already")
    key = new_key()
    spec = KeySpec(
        name=name,
        key_sha256=hash_key(key).hex(),
        models=models,
        rpm=rpm,
        tpm=tpm,
        max_concurrent=max_concurrent,
        admin=admin,
    )
    lines = ["", "[[keys]]", f"name = {_toml_string(spec.name)}", f'key_sha256 = "{spec.key_sha256}"']
    if spec.models is not None:
        lines.append("models = [" + ", ".join(_toml_string(m) for m in spec.models) + "]")
    for field in ("rpm", "tpm", "max_concurrent"):
        value = getattr(spec, field)
        if value is not None:
            lines.append(f"{field} = {value}")
    if admin:
        lines.append("admin = true")
    file.parent.mkdir(parents=True, exist_ok=True)
    with file.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return key
