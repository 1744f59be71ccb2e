"""Cost of writing one streamed chat chunk: a dict through orjson (what api/chat.py does) against a
pydantic model of the same chunk (the typed response models protocol/ once held, unused).

Usage::

    python bench/chunk_encoding.py          # prints JSON; ratio > 1 means the model is slower
"""

from __future__ import annotations

import json
import time
import timeit
from typing import Literal

import orjson
from pydantic import BaseModel


class Delta(BaseModel):
    content: str | None = None


class Choice(BaseModel):
    index: int = 0
    delta: Delta
    logprobs: None = None
    finish_reason: str | None = None


class Chunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    system_fingerprint: str | None = None
    choices: list[Choice]


CID, CREATED, MODEL = "chatcmpl-0123456789abcdef01234567", int(time.time()), "gpt-4o-mini"


def as_dict() -> bytes:
    choice = {"index": 0, "delta": {"content": " token"}, "logprobs": None, "finish_reason": None}
    return orjson.dumps(
        {
            "id": CID,
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": MODEL,
            "system_fingerprint": None,
            "choices": [choice],
        }
    )


def as_model() -> bytes:
    chunk = Chunk(id=CID, created=CREATED, model=MODEL, choices=[Choice(delta=Delta(content=" token"))])
    return chunk.model_dump_json().encode()


def per_call_us(fn: object, number: int = 20_000) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def main() -> None:
    assert json.loads(as_dict()) == json.loads(as_model())
    dict_us, model_us = per_call_us(as_dict), per_call_us(as_model)
    print(
        json.dumps(
            {
                "dict_us": round(dict_us, 2),
                "model_us": round(model_us, 2),
                "ratio": round(model_us / dict_us, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
