"""Sampler chains: one llama.cpp chain per sequence, built from ``SamplingParams``."""

from __future__ import annotations

import random
from typing import Any

import llama_cpp.llama_cpp as C

from .types import SamplingParams

__all__ = ["Sampler"]

# Penalties look back this many generated tokens (OpenAI applies them to the whole completion).
PENALTY_WINDOW = 4096


class Sampler:
    """Owns a llama.cpp sampler chain; ``free`` it exactly once."""

    __slots__ = ("_chain", "seed")

    def __init__(self, params: SamplingParams, *, n_vocab: int, grammar: Any = None) -> None:
        self.seed = params.seed if params.seed is not None else random.getrandbits(32)
        chain = C.llama_sampler_chain_init(C.llama_sampler_chain_default_params())
        if not chain:
            raise MemoryError("llama_sampler_chain_init failed")
        self._chain: Any = chain
        try:
            # The grammar goes first: it masks what may follow, then the chain samples among the rest.
            stages = ([grammar] if grammar is not None else []) + self._stages(params, n_vocab)
            for s in stages:
                if not s:
                    raise MemoryError("a llama.cpp sampler could not be created")
                C.llama_sampler_chain_add(chain, s)  # the chain owns it from here
        except BaseException:
            self.free()
            raise

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

    def free(self) -> None:
        if self._chain:
            C.llama_sampler_free(self._chain)
            self._chain = None
