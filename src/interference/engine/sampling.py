"""Sampler chains: one llama.cpp chain per sequence, built from ``SamplingParams``.

A grammar (structured output, mandatory tool calls) is kept outside the chain and applied the way
llama-server applies it: the unconstrained chain picks a token, the grammar checks that one token,
and only when it refuses does the whole vocabulary go through the grammar before the chain picks
again. Checking every candidate on every step costs about 10 ms per token on a small CPU; checking
one costs next to nothing, and most tokens of a well-prompted answer pass.
"""

from __future__ import annotations

import ctypes
import random
from typing import Any

import llama_cpp.llama_cpp as C
import numpy as np
import numpy.typing as npt

from .types import SamplingParams

__all__ = ["CandidateBuffer", "Sampler"]

# Penalties look back this many generated tokens (OpenAI applies them to the whole completion).
PENALTY_WINDOW = 4096

_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)])


class CandidateBuffer:
    """One reusable ``llama_token_data_array`` over the whole vocabulary (scheduler thread only)."""

    def __init__(self, n_vocab: int) -> None:
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self._one = np.zeros(1, dtype=_TOKEN_DATA)
        data_p = ctypes.cast(self._data.ctypes.data, C.llama_token_data_p)
        one_p = ctypes.cast(self._one.ctypes.data, C.llama_token_data_p)
        self._all = C.llama_token_data_array(data_p, n_vocab, -1, False)
        self._single = C.llama_token_data_array(one_p, 1, -1, False)
        self._n_vocab = n_vocab

    def fill(self, logits: npt.NDArray[np.float32]) -> Any:
        self._data["id"] = self._ids
        self._data["logit"] = logits
        self._data["p"] = 0.0
        self._all.size = self._n_vocab
        self._all.selected = -1
        self._all.sorted = False
        return ctypes.byref(self._all)

    def selected(self) -> int:
        return int(self._data["id"][self._all.selected])

    def allows(self, grammar: Any, token: int) -> bool:
        """Whether the grammar accepts ``token`` next (it masks a refused token to -inf)."""
        self._one[0] = (token, 0.0, 0.0)
        self._single.size = 1
        self._single.selected = -1
        C.llama_sampler_apply(grammar, ctypes.byref(self._single))
        return bool(np.isfinite(self._one["logit"][0]))


class Sampler:
    """Owns a llama.cpp sampler chain (and an optional grammar); ``free`` it exactly once."""

    __slots__ = ("_chain", "_grammar", "greedy", "seed")

    def __init__(self, params: SamplingParams, *, n_vocab: int, grammar: Any = None) -> None:
        self.seed = params.seed if params.seed is not None else random.getrandbits(32)
        self._grammar: Any = grammar
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        if not chain:
            self.free()
            raise MemoryError("llama_sampler_chain_init failed")
        self._chain: Any = chain
        try:
            stages = self._stages(params, n_vocab)
            for s in stages:
                if not s:
                    raise MemoryError("a llama.cpp sampler could not be created")
                C.llama_sampler_chain_add(chain, s)  # the chain owns it from here
        except BaseException:
            self.free()
            raise
        # The chain is the greedy stage alone: ``argmax`` over the logits picks what it would (the
        # first of equal maxima), without the chain copying the whole vocabulary into candidates
        # first (about 0.1 ms a token).
        self.greedy = grammar is None and params.temperature <= 0.0 and len(stages) == 1

    @staticmethod
    def grammar(vocab: Any, gbnf: str) -> Any:
        """A grammar sampler, or None when llama.cpp cannot parse ``gbnf``."""
        sampler = C.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        return sampler or None

    @staticmethod
    def free_sampler(sampler: Any) -> None:
        C.llama_sampler_free(sampler)

    def _stages(self, p: SamplingParams, n_vocab: int) -> list[Any]:
        stages: list[Any] = []
        if p.logit_bias:
            arr = (C.llama_logit_bias * len(p.logit_bias))()
            for i, (tok, bias) in enumerate(p.logit_bias):
                arr[i] = C.llama_logit_bias(tok, bias)
            stages.append(C.llama_sampler_init_logit_bias(n_vocab, len(p.logit_bias), arr))
        if p.repeat_penalty != 1.0 or p.frequency_penalty or p.presence_penalty:
            stages.append(
                C.llama_sampler_init_penalties(
                    n_vocab, PENALTY_WINDOW, p.repeat_penalty, p.frequency_penalty, p.presence_penalty
                )
            )
        if p.temperature <= 0.0:
            stages.append(C.llama_sampler_init_greedy())
            return stages
        if p.top_k > 0:
            stages.append(C.llama_sampler_init_top_k(p.top_k))
        if p.top_p < 1.0:
            stages.append(C.llama_sampler_init_top_p(p.top_p, 1))
        if p.min_p > 0.0:
            stages.append(C.llama_sampler_init_min_p(p.min_p, 1))
        stages.append(C.llama_sampler_init_temp(p.temperature))
        stages.append(C.llama_sampler_init_dist(self.seed))
        return stages

    @property
    def chain(self) -> Any:
        return self._chain

    @property
    def has_grammar(self) -> bool:
        return self._grammar is not None

    def sample_constrained(self, logits: npt.NDArray[np.float32], buf: CandidateBuffer) -> int:
        """Check-then-resample under the grammar; accepts the token into chain and grammar."""
        C.llama_sampler_apply(self._chain, buf.fill(logits))
        token = buf.selected()
        if not buf.allows(self._grammar, token):
            candidates = buf.fill(logits)
            C.llama_sampler_apply(self._grammar, candidates)
            C.llama_sampler_apply(self._chain, candidates)
            token = buf.selected()
        C.llama_sampler_accept(self._grammar, token)
        C.llama_sampler_accept(self._chain, token)
        return token

    def free(self) -> None:
        if getattr(self, "_chain", None):
            C.llama_sampler_free(self._chain)
            self._chain = None
        if self._grammar is not None:
            C.llama_sampler_free(self._grammar)
            self._grammar = None
