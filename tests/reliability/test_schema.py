"""schemathesis against the served /openapi.json: generated requests, valid and not, and no 5xx."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import RunningServer, running_server

EXAMPLES = 25
# Generated requests may ask for thousands of tokens; the model is slow on a shared CPU, and how
# long an answer is has nothing to do with the shapes under test, so each request is cut short.
_TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with running_server(tmp=tmp_path_factory.mktemp("schema")) as s:
        yield s


def _cut_short(path: str, body: Any) -> None:
    if not isinstance(body, dict):
        return
    if isinstance(body.get("model"), str):
        # A random name is a 404 before anything else is looked at: name a served model instead.
        body["model"] = "text-embedding-3-small" if path.endswith("/embeddings") else "gpt-4o-mini"
    for key in _TOKEN_FIELDS:
        if not isinstance(body.get(key), int) or body[key] > 4:
            body[key] = 4
    if isinstance(body.get("n"), int) and body["n"] > 2:
        body["n"] = 2
    if isinstance(body.get("input"), list):
        del body["input"][8:]


def test_no_generated_request_is_a_server_error(server: RunningServer) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    # The root routes are the same handlers as /v1: checking them twice adds nothing.
    operations = [op for op in operations if op.path.startswith("/v1/") or op.path == "/health"]
    assert {op.path for op in operations} >= {"/v1/chat/completions", "/v1/embeddings", "/v1/responses"}
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    for operation in operations:
        # Mostly valid requests (to reach the handlers), then invalid ones (to reach the errors).
        strategy = st.one_of(
            operation.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE),
            operation.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE),
        )

        @settings(
            max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(case=strategy)
        def check(case: schemathesis.Case) -> None:
            _cut_short(case.path, case.body)
            response = case.call(base_url=server.url, timeout=120)
            statuses[response.status_code] += 1
            if response.status_code >= 500 or response.status_code == 422:
                failures.append(f"{case.method} {case.path} {case.body!r:.300} -> {response.status_code}")

        check()
    assert not failures, failures[:5]
    # Both kinds were reached: answers and refusals.
    assert statuses[200] > 10 and statuses[400] > 10, statuses
    print(dict(statuses))
    assert "Traceback" not in server.log
