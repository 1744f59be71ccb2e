"""One KV pool shared by the slots: a sequence may use the model's trained context while others idle."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

from conftest import running_server

MODEL = "SmolLM2-135M-Instruct.Q4_1"


def _chat(words: int, max_tokens: int = 4) -> dict[str, object]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "word " * words}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }


def test_one_sequence_gets_the_trained_context_by_default(tmp_path: Path) -> None:
    with running_server("--parallel", "8", tmp=tmp_path) as server, server.http(timeout=300) as http:
        assert "8 slots sharing 16384 tokens (up to 8192 each)" in server.log
        card = http.get(f"/v1/models/{MODEL}").json()
        assert card["context_length"] == 8192

        # Over the 2048 tokens a slot got when each had its own slice (kept short: the prefill of
        # thousands of tokens takes seconds on two cores).
        r = http.post("/v1/chat/completions", json=_chat(2600))
        assert r.status_code == 200, r.text
        body = r.json()
        assert 2600 <= body["usage"]["prompt_tokens"] < 8192
        assert body["choices"][0]["finish_reason"] in {"stop", "length"}

        # Over the trained context: refused before any prefill.
        r = http.post("/v1/chat/completions", json=_chat(9000))
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "context_length_exceeded"


def test_requests_that_overflow_the_pool_together_take_turns(tmp_path: Path) -> None:
    # A pool of 2048 for two slots: each prompt fits alone, both together do not.
    with (
        running_server("--parallel", "2", "-c", "2048", tmp=tmp_path) as server,
        server.http(timeout=300) as http,
    ):
        assert "2 slots sharing 2048 tokens (up to 2048 each)" in server.log
        assert http.get(f"/v1/models/{MODEL}").json()["context_length"] == 2048
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            replies = list(
                pool.map(lambda n: http.post("/v1/chat/completions", json=_chat(n, 8)), [1200, 1210])
            )
        for r in replies:
            assert r.status_code == 200, r.text
            assert r.json()["usage"]["completion_tokens"] >= 1
            assert r.json()["choices"][0]["finish_reason"] in {"stop", "length"}
        # Never fits in one sequence of this pool: 400 at once.
        r = http.post("/v1/chat/completions", json=_chat(3000))
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "context_length_exceeded"
        assert http.get("/health").status_code == 200
