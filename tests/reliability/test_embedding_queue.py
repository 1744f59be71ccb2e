"""The embedding queue is bounded: requests beyond it get a 429 with Retry-After, the rest are served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from conftest import running_server


def test_embedding_requests_beyond_the_queue_are_429(tmp_path: Path) -> None:
    # No waiting at all: while one request runs (the first also loads the model), the others are refused.
    with running_server("--embedding-queue", "0", tmp=tmp_path) as server:

        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
                body = {"model": "text-embedding-3-small", "input": ["a sentence to embed"] * 16}
                return await asyncio.gather(*(client.post("/v1/embeddings", json=body) for _ in range(12)))

        responses = asyncio.run(burst())
        statuses = sorted(r.status_code for r in responses)
        assert set(statuses) == {200, 429}, statuses
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
                assert r.json()["error"]["type"] == "rate_limit_error"
                assert r.json()["error"]["code"] == "server_overloaded"
        # The queue is free again once the burst is over.
        r = httpx.post(f"{server.url}/v1/embeddings", json={"model": "text-embedding-3-small", "input": "x"})
        assert r.status_code == 200 and len(r.json()["data"]) == 1
