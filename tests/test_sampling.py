"""Greedy sampling by argmax: the same token as llama.cpp's greedy sampler, and only where it applies."""

from __future__ import annotations

import numpy as np
import pytest
from llama_cpp import llama_cpp as C

from interference.engine._llama import LlamaRuntime
from interference.engine.cpu import choose_repack, read_cpu_info
from interference.engine.engine import embedded_model_path
from interference.engine.sampling import CandidateBuffer, Sampler
from interference.engine.types import SamplingParams


@pytest.mark.parametrize(
    ("fields", "greedy"),
    [
        ({"temperature": 0.0}, True),
        ({"temperature": 0.0, "top_k": 40, "min_p": 0.05, "top_p": 0.9}, True),  # no effect at 0
        ({"temperature": 0.7}, False),
        ({"temperature": 0.0, "logit_bias": ((5, 3.0),)}, False),
        ({"temperature": 0.0, "repeat_penalty": 1.1}, False),
        ({"temperature": 0.0, "frequency_penalty": 0.5}, False),
        ({"temperature": 0.0, "presence_penalty": 0.5}, False),
    ],
)
def test_argmax_only_where_the_chain_is_greedy_alone(fields: dict[str, object], greedy: bool) -> None:
    sampler = Sampler(SamplingParams(**fields), n_vocab=100)  # type: ignore[arg-type]
    try:
        assert sampler.greedy is greedy
    finally:
        sampler.free()


def test_argmax_picks_the_chain_greedy_token_ties_included() -> None:
    n_vocab = 64
    rng = np.random.default_rng(3)
    sampler = Sampler(SamplingParams(temperature=0.0), n_vocab=n_vocab)
    buf = CandidateBuffer(n_vocab)
    try:
        for case in range(200):
            logits = rng.normal(size=n_vocab).astype(np.float32)
            if case % 2:  # equal maxima: both pick the first
                top = rng.choice(n_vocab, size=3, replace=False)
                logits[top] = logits.max() + 1.0
            C.llama_sampler_apply(sampler.chain, buf.fill(logits))
            assert buf.selected() == int(logits.argmax())
    finally:
        sampler.free()


def test_argmax_matches_the_model_greedy_token_on_every_batch_row() -> None:
    repack = choose_repack(None, read_cpu_info()).enabled
    rt = LlamaRuntime(embedded_model_path(), n_ctx=4 * 256, n_seq=4, n_batch=256, n_threads=2, repack=repack)
    sampler = Sampler(SamplingParams(temperature=0.0), n_vocab=rt.n_vocab)
    try:
        rows = []
        texts = ["The sky is", "def fibonacci(n):", "Paris is the capital of", "1, 2, 3,"]
        for seq, text in enumerate(texts):
            tokens = rt.tokenize(text, add_special=False)
            for i, tok in enumerate(tokens):
                row = rt.batch_add(tok, i, seq, logits=i == len(tokens) - 1)
            rows.append(row)
        assert rt.decode() == 0
        for row in rows:
            assert int(rt.logits(row).argmax()) == rt.sample(sampler.chain, row)
            # The view by address is the row llama.cpp hands out, made once and reused.
            pointer = C.llama_get_logits_ith(rt.ctx, row)
            assert np.array_equal(rt.logits(row), np.ctypeslib.as_array(pointer, shape=(rt.n_vocab,)))
            assert rt.logits(row) is rt.logits(row)
        # After another decode the same view shows the new logits.
        before = rt.logits(rows[0]).copy()
        rt.batch_clear()
        rt.batch_add(
            rt.tokenize(" blue", add_special=False)[0],
            len(rt.tokenize(texts[0], add_special=False)),
            0,
            logits=True,
        )
        assert rt.decode() == 0
        pointer = C.llama_get_logits_ith(rt.ctx, 0)
        assert np.array_equal(rt.logits(0), np.ctypeslib.as_array(pointer, shape=(rt.n_vocab,)))
        assert not np.array_equal(rt.logits(0), before)
    finally:
        sampler.free()
        rt.close()
