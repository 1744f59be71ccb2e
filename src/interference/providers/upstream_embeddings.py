"""An upstream's /v1/embeddings answer, read into ``Embeddings`` (float lists or base64 alike)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import UpstreamProtocolError
from .base import Embeddings

__all__ = ["embeddings_from_body"]


def embeddings_from_body(body: Any, *, expected: int) -> Embeddings:
    """Rows in input order (by ``index``); raises ``UpstreamProtocolError`` for anything malformed."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or len(data) != expected:
        raise UpstreamProtocolError("The upstream server sent a malformed embeddings response.")
    rows: dict[int, npt.NDArray[np.float32]] = {}
    for position, item in enumerate(data):
        if not isinstance(item, dict):
            raise UpstreamProtocolError("The upstream server sent a malformed embedding.")
        index = item.get("index", position)
        if not isinstance(index, int) or not 0 <= index < expected or index in rows:
            raise UpstreamProtocolError("The upstream server sent a malformed embedding index.")
        rows[index] = _vector(item.get("embedding"))
    if len({row.shape for row in rows.values()}) != 1:
        raise UpstreamProtocolError("The upstream server sent embeddings of different sizes.")
    usage = body.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return Embeddings(
        vectors=np.stack([rows[i] for i in range(expected)]),
        prompt_tokens=tokens if isinstance(tokens, int) else 0,
    )


def _vector(value: Any) -> npt.NDArray[np.float32]:
    if isinstance(value, str):  # encoding_format "base64": little-endian float32
        try:
            raw = base64.b64decode(value, validate=True)
        except binascii.Error:
            raw = b"\0"  # fails the size check below
        if not raw or len(raw) % 4:
            raise UpstreamProtocolError("The upstream server sent a malformed base64 embedding.")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if isinstance(value, list) and value and all(isinstance(x, int | float) for x in value):
        return np.asarray(value, dtype=np.float32)
    raise UpstreamProtocolError("The upstream server sent a malformed embedding.")
