"""A GGUF's resident cost, estimated before loading it, from a vocabulary-only probe of its metadata.

The estimate is what llama.cpp allocates on the CPU for one engine (see docs/models.md):

- the mapped weights: the file's size (every page is touched once the model has run);
- the KV cache: ``n_layer x n_ctx x (n_embd_k_gqa + n_embd_v_gqa) x bytes per element`` for every slot;
- the compute buffer: the logits of one micro-batch (``n_ubatch x n_vocab`` floats) plus a few activations
  per token, and the output buffer (one row of logits per slot);
- not the host-RAM prompt cache: every engine's cache draws on one shared, elastic pool
  (``PromptCachePool``), counted once by the memory budget, not per model;
- a fixed allowance for the context's own bookkeeping.
"""

from __future__ import annotations

import ctypes
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import llama_cpp.llama_cpp as C

from ._llama import ModelLoadError, model_params

__all__ = ["Footprint", "GgufFacts", "estimate_footprint", "probe_gguf"]

MIB = 2**20
_ELEMENT_BYTES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}  # ggml block sizes per element
_ACTIVATIONS_PER_TOKEN = 6  # floats per n_embd per micro-batch token besides the logits (measured: 5.8)
_CONTEXT_OVERHEAD = 16 * MIB  # graph metadata, thread pool, sampler chains


@dataclass(frozen=True, slots=True)
class GgufFacts:
    """What the estimate needs from a GGUF, read without loading its weights."""

    path: Path
    file_bytes: int
    n_layer: int
    n_embd: int
    n_embd_k_gqa: int
    n_embd_v_gqa: int
    n_vocab: int
    n_ctx_train: int
    chat_template: str | None


@dataclass(frozen=True, slots=True)
class Footprint:
    """An engine's estimated resident bytes, by part."""

    weights: int
    kv_cache: int
    compute: int
    cache_ram: int  # the engine's own cap on the shared prompt cache (not part of ``total``)
    n_ctx: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + _CONTEXT_OVERHEAD

    @property
    def total_mib(self) -> int:
        return -(-self.total // MIB)


_PROBE_LOCK = threading.Lock()  # llama_backend_init and model loads are not reentrant across threads


def _meta(model: object, key: str) -> str | None:
    size = C.llama_model_meta_val_str(model, key.encode(), None, 0)
    if size < 0:
        return None
    buf = ctypes.create_string_buffer(size + 1)
    C.llama_model_meta_val_str(model, key.encode(), buf, size + 1)
    return buf.value.decode("utf-8", errors="replace")


def probe_gguf(path: Path) -> GgufFacts:
    """Read a GGUF's shape (layers, widths, vocabulary) with a vocabulary-only load; raises ModelLoadError."""
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}")
    params = model_params(repack=False)
    params.vocab_only = True
    with _PROBE_LOCK:
        C.llama_backend_init()
        model = C.llama_model_load_from_file(str(path).encode(), params)
    if not model:
        raise ModelLoadError(f"not a loadable GGUF model: {path}")
    try:
        # Shapes come from the metadata: a vocabulary-only model has no layers to ask llama.cpp about.
        arch = _meta(model, "general.architecture") or ""

        def number(key: str, default: int = 0) -> int:
            raw = _meta(model, f"{arch}.{key}")
            found = [int(x) for x in re.findall(r"\d+", raw or "")]
            return max(found) if found else default  # per-layer arrays: the widest layer

        n_embd = number("embedding_length")
        n_head = max(1, number("attention.head_count", 1))
        n_head_kv = number("attention.head_count_kv", n_head)
        head_k = number("attention.key_length", n_embd // n_head)
        head_v = number("attention.value_length", head_k)
        if not n_embd or not number("block_count"):
            raise ModelLoadError(f"{path}: its metadata lacks the model's shape (architecture {arch!r})")
        return GgufFacts(
            path=path,
            file_bytes=path.stat().st_size,
            n_layer=number("block_count"),
            n_embd=n_embd,
            n_embd_k_gqa=head_k * n_head_kv,
            n_embd_v_gqa=head_v * n_head_kv,
            n_vocab=int(C.llama_vocab_n_tokens(C.llama_model_get_vocab(model))),
            n_ctx_train=number("context_length"),
            chat_template=_meta(model, "tokenizer.chat_template"),
        )
    finally:
        C.llama_model_free(model)


def context_tokens(facts: GgufFacts, *, ctx_size: int, parallel: int, default_per_slot: int) -> int:
    """The KV pool llama.cpp will allocate, as ``LlamaRuntime`` sizes it (shared by the slots)."""
    return ctx_size if ctx_size else default_per_slot * parallel


def sequence_tokens(facts: GgufFacts, pool: int) -> int:
    """The longest one sequence may be in a pool of ``pool`` cells (at most the model's trained context)."""
    return min(pool, facts.n_ctx_train) if facts.n_ctx_train > 0 else pool


def estimate_footprint(
    facts: GgufFacts,
    *,
    ctx_size: int,
    parallel: int,
    batch_size: int,
    cache_type: str,
    default_per_slot: int = 2048,
    cache_ram_mib: int = 0,
) -> Footprint:
    """The resident cost of serving ``facts`` with these engine options (an upper bound, see module doc)."""
    n_ctx = context_tokens(facts, ctx_size=ctx_size, parallel=parallel, default_per_slot=default_per_slot)
    kv = facts.n_layer * n_ctx * (facts.n_embd_k_gqa + facts.n_embd_v_gqa) * _ELEMENT_BYTES[cache_type]
    n_ubatch = min(max(batch_size, 512), 512)
    compute = 4 * n_ubatch * (facts.n_vocab + _ACTIVATIONS_PER_TOKEN * facts.n_embd)
    output = 4 * facts.n_vocab * parallel
    return Footprint(
        weights=facts.file_bytes,
        kv_cache=int(kv),
        compute=compute + output,
        cache_ram=cache_ram_mib * MIB,
        n_ctx=n_ctx,
    )
