"""POST /v1/embeddings against the real server (bundled all-MiniLM-L6-v2), and through an upstream."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from conftest import RunningServer, free_port, running_server
from fake_upstream import FakeUpstream

MODEL = "text-embedding-3-small"
DIMS = 384
# "hello world" in BERT's uncased WordPiece vocabulary, with [CLS] and [SEP].
HELLO_WORLD_IDS = [101, 7592, 2088, 102]


def _embed(client: openai.OpenAI, inputs: Any, **kwargs: Any) -> np.ndarray[Any, Any]:
    result = client.embeddings.create(model=MODEL, input=inputs, **kwargs)
    return np.array([d.embedding for d in result.data], dtype=np.float32)


def _post(http: httpx.Client, body: dict[str, Any], path: str = "/v1/embeddings") -> httpx.Response:
    return http.post(path, json=body)


# ---------------------------------------------------------------------- input shapes


def test_one_string(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model=MODEL, input="The quick brown fox.", encoding_format="float")
    assert result.object == "list"
    assert result.model == MODEL
    assert len(result.data) == 1
    item = result.data[0]
    assert item.object == "embedding" and item.index == 0
    assert len(item.embedding) == DIMS
    assert np.linalg.norm(item.embedding) == pytest.approx(1.0, abs=1e-4)
    assert result.usage.prompt_tokens == result.usage.total_tokens > 2


def test_list_of_strings_keeps_order_and_matches_single_calls(client: openai.OpenAI) -> None:
    texts = ["first sentence", "a second, longer sentence about something else", "third"]
    batch = _embed(client, texts)
    assert batch.shape == (3, DIMS)
    for i, text in enumerate(texts):
        single = _embed(client, text)[0]
        assert float(batch[i] @ single) > 0.9999


def test_token_ids_embed_like_the_text(client: openai.OpenAI) -> None:
    from_ids = client.embeddings.create(model=MODEL, input=HELLO_WORLD_IDS)
    assert from_ids.usage.prompt_tokens == len(HELLO_WORLD_IDS)
    text = client.embeddings.create(model=MODEL, input="hello world")
    assert text.usage.prompt_tokens == len(HELLO_WORLD_IDS)
    assert float(np.dot(from_ids.data[0].embedding, text.data[0].embedding)) > 0.9999


def test_list_of_token_id_lists(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model=MODEL, input=[HELLO_WORLD_IDS, [101, 7592, 102]])
    assert [d.index for d in result.data] == [0, 1]
    assert result.usage.prompt_tokens == 7
    a, b = (np.array(d.embedding) for d in result.data)
    assert 0.3 < float(a @ b) < 0.999


def test_many_inputs_span_several_batches(client: openai.OpenAI) -> None:
    texts = [f"sentence number {i} is about topic {i % 7}" for i in range(150)]  # > 64 sequences per decode
    batch = _embed(client, texts)
    assert batch.shape == (150, DIMS)
    for i in (0, 63, 64, 149):
        assert float(batch[i] @ _embed(client, texts[i])[0]) > 0.9999


def test_similar_sentences_are_closer_than_dissimilar(client: openai.OpenAI) -> None:
    food, bread, movie = _embed(
        client, ["A man is eating food.", "A man is eating a piece of bread.", "The new movie is awesome."]
    )
    assert float(food @ bread) > 0.6  # sentence-transformers gives 0.755 for this pair
    assert float(food @ bread) > float(food @ movie) + 0.4
    assert float(bread @ movie) < 0.2


# ---------------------------------------------------------------------- dimensions and encodings


def test_dimensions_cut_and_renormalise(client: openai.OpenAI) -> None:
    full = _embed(client, "matryoshka dolls nest inside each other")[0]
    short = _embed(client, "matryoshka dolls nest inside each other", dimensions=64)[0]
    assert short.shape == (64,)
    assert np.linalg.norm(short) == pytest.approx(1.0, abs=1e-4)
    expected = full[:64] / np.linalg.norm(full[:64])
    assert np.allclose(short, expected, atol=1e-5)
    assert _embed(client, "same size", dimensions=DIMS).shape == (1, DIMS)


def test_base64_decodes_to_the_float_vector(http: httpx.Client) -> None:
    body = {"model": MODEL, "input": ["base64 please", "and another"]}
    floats = _post(http, {**body, "encoding_format": "float"}).json()
    packed = _post(http, {**body, "encoding_format": "base64"}).json()
    assert packed["usage"] == floats["usage"]
    for f, p in zip(floats["data"], packed["data"], strict=True):
        assert isinstance(p["embedding"], str)
        raw = base64.b64decode(p["embedding"])
        assert len(raw) == 4 * DIMS
        decoded = struct.unpack(f"<{DIMS}f", raw)  # little-endian float32, as OpenAI sends it
        assert np.allclose(decoded, f["embedding"], rtol=0, atol=1e-7)


def test_sdk_default_base64_matches_float(client: openai.OpenAI) -> None:
    # The openai SDK asks for base64 unless told otherwise, and decodes it itself.
    default = client.embeddings.create(model=MODEL, input="sdk default encoding")
    floats = client.embeddings.create(model=MODEL, input="sdk default encoding", encoding_format="float")
    assert np.allclose(default.data[0].embedding, floats.data[0].embedding, atol=1e-7)


def test_wire_shape(http: httpx.Client) -> None:
    response = _post(http, {"model": MODEL, "input": "shape check", "user": "u-1", "extra_field": 1})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"object", "data", "model", "usage"}
    assert body["object"] == "list" and body["model"] == MODEL
    assert set(body["data"][0]) == {"object", "index", "embedding"}
    assert all(isinstance(x, float) for x in body["data"][0]["embedding"])
    assert set(body["usage"]) == {"prompt_tokens", "total_tokens"}
    # Mounted at the root too, for clients configured without /v1.
    assert _post(http, {"model": MODEL, "input": "root"}, path="/embeddings").status_code == 200


def test_models_lists_the_embedding_model_and_aliases(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"all-MiniLM-L6-v2", "text-embedding-3-small", "text-embedding-3-large"} <= ids
    assert "text-embedding-ada-002" in ids


def test_every_alias_embeds_alike(client: openai.OpenAI) -> None:
    vectors = [
        client.embeddings.create(model=name, input="alias").data[0].embedding
        for name in ("all-MiniLM-L6-v2", "text-embedding-ada-002", "text-embedding-3-large")
    ]
    assert np.allclose(vectors[0], vectors[1]) and np.allclose(vectors[0], vectors[2])


def test_concurrent_requests(server: RunningServer) -> None:
    texts = [f"concurrent request {i}" for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda t: _embed(server.client(), [t, t + "!"]), texts))
    assert all(r.shape == (2, DIMS) for r in results)
    assert float(results[0][0] @ _embed(server.client(), texts[0])[0]) > 0.9999


# ---------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({"input": ["ok", ""]}, "input"),
        ({"input": [[101, 102], []]}, "input"),
        ({"input": 42}, "input"),
        ({"input": "x", "dimensions": 0}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": ["x"] * 2049}, "input"),
        ({}, "input"),
    ],
)
def test_bad_input_is_a_400_naming_the_param(http: httpx.Client, body: dict[str, Any], param: str) -> None:
    response = _post(http, {"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param


def test_too_many_dimensions(http: httpx.Client) -> None:
    response = _post(http, {"model": MODEL, "input": "x", "dimensions": DIMS + 1})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "dimensions"
    assert str(DIMS) in response.json()["error"]["message"]


def test_token_ids_outside_the_vocabulary(http: httpx.Client) -> None:
    response = _post(http, {"model": MODEL, "input": [[101, 102], [101, 10**6, 102]]})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input[1]"


def test_input_longer_than_the_context(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input="word " * 600)
    error = info.value.body
    assert isinstance(error, dict)
    assert error["code"] == "context_length_exceeded"
    assert error["param"] == "input"
    assert "512" in error["message"]
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model=MODEL, input=["short", "word " * 600])
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "input[1]"


def test_unknown_model_is_a_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="no-such-embedder", input="x")
    assert isinstance(info.value.body, dict) and info.value.body["code"] == "model_not_found"


def test_chat_model_refuses_embeddings_and_embedding_model_refuses_chat(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="gpt-4o", input="x")
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}])
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "model"


def test_malformed_json(http: httpx.Client) -> None:
    response = http.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# ---------------------------------------------------------------------- the converted model


def test_conversion_matches_a_numpy_bert(client: openai.OpenAI) -> None:
    """The GGUF we convert computes what the original checkpoint computes (mean pooling, normalised)."""
    from interference.engine.embedding_source import EmbeddingSource

    source = EmbeddingSource.find(None)
    assert source is not None
    expected = _reference_bert(source.path, HELLO_WORLD_IDS)
    got = np.array(client.embeddings.create(model=MODEL, input="hello world").data[0].embedding)
    assert float(expected @ got) > 0.999  # f16 weights and ggml's GELU approximation


def _reference_bert(folder: Path, ids: list[int]) -> np.ndarray[Any, Any]:
    raw = (folder / "model.safetensors").read_bytes()
    (size,) = struct.unpack_from("<Q", raw)
    header = json.loads(raw[8 : 8 + size])
    config = json.loads((folder / "config.json").read_text())

    def w(name: str) -> np.ndarray[Any, Any]:
        info = header[name]
        begin, end = info["data_offsets"]
        return np.frombuffer(raw[8 + size + begin : 8 + size + end], dtype="<f4").reshape(info["shape"])

    def norm(x: np.ndarray[Any, Any], prefix: str) -> np.ndarray[Any, Any]:
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + config["layer_norm_eps"]) * w(prefix + ".weight") + w(
            prefix + ".bias"
        )

    def linear(x: np.ndarray[Any, Any], prefix: str) -> np.ndarray[Any, Any]:
        return x @ w(prefix + ".weight").T + w(prefix + ".bias")

    from math import erf, sqrt

    gelu = np.vectorize(lambda v: 0.5 * v * (1 + erf(v / sqrt(2))))
    n, heads = len(ids), config["num_attention_heads"]
    x = w("embeddings.word_embeddings.weight")[ids] + w("embeddings.position_embeddings.weight")[:n]
    x = norm(x + w("embeddings.token_type_embeddings.weight")[0], "embeddings.LayerNorm")
    for layer in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{layer}."
        q, k, v = (
            linear(x, p + f"attention.self.{m}").reshape(n, heads, -1) for m in ("query", "key", "value")
        )
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1])
        attn = np.exp(scores - scores.max(-1, keepdims=True))
        attn /= attn.sum(-1, keepdims=True)
        context = np.einsum("hqk,khd->qhd", attn, v).reshape(n, -1)
        x = norm(x + linear(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        hidden = gelu(linear(x, p + "intermediate.dense"))
        x = norm(x + linear(hidden, p + "output.dense"), p + "output.LayerNorm")
    pooled = x.mean(0)
    return np.asarray(pooled / np.linalg.norm(pooled))


# ---------------------------------------------------------------------- through an upstream


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningServer, FakeUpstream]]:
    tmp = tmp_path_factory.mktemp("embeddings-gateway")
    good, bad = FakeUpstream().start(), FakeUpstream(embedding_status=400).start()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = tmp / "gateway.toml"
    config.write_text(
        f"""
[[models]]
name = "up-embed"
aliases = ["text-embedding-3-small"]
[[models.deployments]]
type = "openai"
base_url = "{good.url}"
model = "upstream-embedder"

[[models]]
name = "up-failover"
[[models.deployments]]
type = "openai"
base_url = "{dead}"
connect_timeout = 1.0
[[models.deployments]]
type = "openai"
base_url = "{good.url}"

[[models]]
name = "up-bad"
[[models.deployments]]
type = "openai"
base_url = "{bad.url}"
"""
    )
    try:
        with running_server("--config", str(config), tmp=tmp) as server:
            yield server, good
    finally:
        good.stop()
        bad.stop()


def test_upstream_pass_through_float_and_base64(gateway: tuple[RunningServer, FakeUpstream]) -> None:
    server, upstream = gateway
    client = server.client()
    result = client.embeddings.create(model="up-embed", input=["a", "b", "c"], encoding_format="float")
    assert [d.embedding[0] for d in result.data] == [1.0, 2.0, 3.0]
    assert result.usage.prompt_tokens == 15
    assert upstream.bodies[-1]["model"] == "upstream-embedder"
    assert upstream.bodies[-1]["input"] == ["a", "b", "c"]
    # The SDK's default (base64) goes upstream as asked; its answer is decoded and re-encoded.
    default = client.embeddings.create(model="up-embed", input=["a", "b"], dimensions=4)
    assert upstream.bodies[-1]["encoding_format"] == "base64"
    assert upstream.bodies[-1]["dimensions"] == 4
    assert [d.embedding for d in default.data] == [[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 1.0]]


def test_upstream_alias_wins_over_the_local_default(
    gateway: tuple[RunningServer, FakeUpstream],
) -> None:
    server, upstream = gateway
    result = server.client().embeddings.create(model="text-embedding-3-small", input="x")
    assert result.data[0].embedding[0] == 1.0
    assert upstream.bodies[-1]["model"] == "upstream-embedder"


def test_upstream_failover(gateway: tuple[RunningServer, FakeUpstream]) -> None:
    server, _ = gateway
    result = server.client().embeddings.create(model="up-failover", input="x", encoding_format="float")
    assert result.data[0].embedding[0] == 1.0


def test_upstream_4xx_passes_through(gateway: tuple[RunningServer, FakeUpstream]) -> None:
    server, _ = gateway
    with pytest.raises(openai.BadRequestError) as info:
        server.client().embeddings.create(model="up-bad", input="x")
    assert isinstance(info.value.body, dict)
    assert info.value.body["param"] == "input"
    assert "upstream says 400" in info.value.body["message"]


def test_the_local_model_still_answers_by_its_own_name(
    gateway: tuple[RunningServer, FakeUpstream],
) -> None:
    server, upstream = gateway
    hits = len(upstream.bodies)
    result = server.client().embeddings.create(model="all-MiniLM-L6-v2", input="x")
    assert len(result.data[0].embedding) == DIMS
    assert len(upstream.bodies) == hits


# ---------------------------------------------------------------------- settings


def test_embeddings_can_be_switched_off() -> None:
    from interference.cli import _settings, build_parser
    from interference.providers.local_embeddings import embedding_provider
    from interference.settings import load_settings

    settings = _settings(build_parser().parse_args(["serve", "--no-embeddings"]))
    assert settings.embeddings is False
    assert embedding_provider(settings, repack=False) is None
    assert load_settings(env={"INTERFERENCE_EMBEDDINGS": "false"}).embeddings is False
    assert load_settings(env={}).embeddings is True


def test_a_wrong_embedding_model_path_fails_at_start_up(tmp_path: Path) -> None:
    from interference.engine import ModelLoadError
    from interference.providers.local_embeddings import embedding_provider
    from interference.settings import load_settings

    settings = load_settings({"embedding_model": str(tmp_path / "missing.gguf")}, env={})
    with pytest.raises(ModelLoadError, match="embedding model not found"):
        embedding_provider(settings, repack=False)
