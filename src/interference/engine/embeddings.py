"""Local embeddings on llama.cpp: a context of its own with ``embeddings=True`` and one worker thread.

``EmbeddingRuntime`` owns the model and context and is not thread-safe. ``EmbeddingEngine`` loads it
on a dedicated thread when started (so start-up never waits, even when the bundled checkpoint must be
converted to GGUF first) and runs every call on that thread; the event loop only awaits.

Several inputs share one ``llama_decode`` with distinct sequence ids. The batch is capped at the
model's context (512 tokens for MiniLM): a non-causal encoder attends over the whole batch with a
mask, so its cost grows with the square of the batch, and a few hundred tokens is the sweet spot.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import llama_cpp.llama_cpp as C
import numpy as np
import numpy.typing as npt

from ._llama import ModelLoadError, model_params, tokenize
from .embedding_source import EmbeddingSource

__all__ = ["EmbeddingBusy", "EmbeddingEngine", "EmbeddingInfo", "EmbeddingInputError", "EmbeddingRuntime"]

logger = logging.getLogger(__name__)

MAX_SEQS = 64  # sequences per llama_decode
MAX_INPUT_TOKENS = 2048  # per input, whatever the model was trained on: bounds the attention buffer
_POOLING_NAMES = {
    C.LLAMA_POOLING_TYPE_MEAN: "mean",
    C.LLAMA_POOLING_TYPE_CLS: "cls",
    C.LLAMA_POOLING_TYPE_LAST: "last",
}


class EmbeddingInputError(Exception):
    """One input cannot be embedded; ``param`` names it (``input`` or ``input[3]``)."""

    def __init__(self, message: str, *, param: str, too_long: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.too_long = too_long


class EmbeddingBusy(Exception):
    """Too many requests wait for the embedding thread; ``retry_after`` estimates when one frees up."""

    def __init__(self, waiting: int, retry_after: float) -> None:
        super().__init__(f"{waiting} embedding requests are waiting")
        self.waiting = waiting
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class EmbeddingInfo:
    """Facts about a loaded embedding model."""

    path: Path
    n_embd: int
    max_tokens: int  # per input
    n_params: int
    size_bytes: int
    pooling: str


class EmbeddingRuntime:
    """An embedding model and its context; returns L2-normalised pooled vectors."""

    def __init__(self, path: Path, *, n_threads: int, repack: bool) -> None:
        C.llama_backend_init()
        self._model = C.llama_model_load_from_file(str(path).encode(), model_params(repack=repack))
        if not self._model:
            raise ModelLoadError(f"not a loadable GGUF model: {path}")
        self._ctx = None
        self._batch_ready = False
        try:
            self._vocab = C.llama_model_get_vocab(self._model)
            self.n_vocab = int(C.llama_vocab_n_tokens(self._vocab))
            n_ctx_train = int(C.llama_model_n_ctx_train(self._model))
            self.max_tokens = min(n_ctx_train, MAX_INPUT_TOKENS) if n_ctx_train > 0 else MAX_INPUT_TOKENS
            self.n_batch = max(self.max_tokens, 512)
            self._ctx = self._context(n_threads, C.LLAMA_POOLING_TYPE_UNSPECIFIED)
            pooling = int(C.llama_pooling_type(self._ctx))
            if pooling == C.LLAMA_POOLING_TYPE_NONE:
                # A model that names no pooling (a plain LLM, say) gets the mean of its token states.
                C.llama_free(self._ctx)
                self._ctx = self._context(n_threads, C.LLAMA_POOLING_TYPE_MEAN)
                pooling = C.LLAMA_POOLING_TYPE_MEAN
            if pooling not in _POOLING_NAMES:
                raise ModelLoadError(f"{path} is a reranker (pooling type {pooling}), not an embedding model")
        except BaseException:
            self.close()
            raise
        self._mem = C.llama_get_memory(self._ctx)
        self._batch = C.llama_batch_init(self.n_batch, 0, 1)
        self._batch_ready = True
        self.info = EmbeddingInfo(
            path=path,
            n_embd=int(C.llama_model_n_embd_out(self._model)),
            max_tokens=self.max_tokens,
            n_params=int(C.llama_model_n_params(self._model)),
            size_bytes=int(C.llama_model_size(self._model)),
            pooling=_POOLING_NAMES[pooling],
        )

    def _context(self, n_threads: int, pooling: int) -> ctypes.c_void_p:
        params = C.llama_context_default_params()
        params.embeddings = True
        params.pooling_type = pooling
        params.n_ctx = params.n_batch = params.n_ubatch = self.n_batch  # an encoder needs one ubatch
        params.n_seq_max = MAX_SEQS
        params.kv_unified = True  # one pool: no per-sequence split of n_ctx
        params.n_threads = params.n_threads_batch = n_threads
        params.no_perf = True
        ctx = C.llama_init_from_model(self._model, params)
        if not ctx:
            raise ModelLoadError("could not create an embedding context")
        return ctx  # type: ignore[no-any-return]

    def tokenize(self, text: str) -> list[int]:
        # Special tokens in client text stay text: "[CLS]" must not become the CLS token.
        return tokenize(self._vocab, text, add_special=True, parse_special=False)

    def embed(self, inputs: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """One L2-normalised row per input; inputs must be non-empty and at most ``max_tokens`` long."""
        out = np.empty((len(inputs), self.info.n_embd), dtype=np.float32)
        group: list[int] = []
        used = 0
        for i, tokens in enumerate(inputs):
            if group and (used + len(tokens) > self.n_batch or len(group) == MAX_SEQS):
                self._run(inputs, group, out)
                group, used = [], 0
            group.append(i)
            used += len(tokens)
        if group:
            self._run(inputs, group, out)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.maximum(norms, np.float32(1e-12))
        return out

    def _run(self, inputs: Sequence[Sequence[int]], group: list[int], out: npt.NDArray[np.float32]) -> None:
        b = self._batch
        row = 0
        for seq, i in enumerate(group):
            for pos, token in enumerate(inputs[i]):
                b.token[row] = token
                b.pos[row] = pos
                b.n_seq_id[row] = 1
                b.seq_id[row][0] = seq
                b.logits[row] = 1
                row += 1
        b.n_tokens = row
        try:
            rc = int(C.llama_decode(self._ctx, b))
            if rc != 0:
                raise RuntimeError(f"llama_decode failed with {rc} on {row} tokens")
            for seq, i in enumerate(group):
                pointer = C.llama_get_embeddings_seq(self._ctx, seq)
                if not pointer:
                    raise RuntimeError(f"no pooled embedding for sequence {seq}")
                out[i] = np.ctypeslib.as_array(pointer, shape=(self.info.n_embd,))
        finally:
            if self._mem:  # causal models keep a KV cache; encoders have none
                C.llama_memory_clear(self._mem, True)

    def close(self) -> None:
        if self._batch_ready:
            C.llama_batch_free(self._batch)
            self._batch_ready = False
        if self._ctx:
            C.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            C.llama_model_free(self._model)
            self._model = None


class EmbeddingEngine:
    """Serves every call from its own thread; the model loads there on first use.

    Loading lazily keeps start-up time and memory for those who never ask for embeddings; the first
    request pays the load (well under a second for the bundled model).
    """

    def __init__(self, source: EmbeddingSource, *, threads: int, repack: bool, max_waiting: int = 64) -> None:
        self.source = source
        self.threads = threads
        self.repack = repack
        self.max_waiting = max_waiting
        self._pending = 0  # calls submitted and not finished: one runs, the rest wait
        self._service_s = 0.05  # moving average of one call's time on the thread
        self._executor: ThreadPoolExecutor | None = None
        self._runtime: EmbeddingRuntime | None = None
        self._load_error: Exception | None = None

    @property
    def is_loaded(self) -> bool:
        return self._runtime is not None

    def start(self) -> None:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embeddings")

    def _load(self) -> EmbeddingRuntime:
        started = time.perf_counter()
        try:
            path = self.source.gguf()
            self._runtime = EmbeddingRuntime(path, n_threads=self.threads, repack=self.repack)
        except Exception:
            logger.exception("could not load the embedding model %s", self.source.name)
            raise
        i = self._runtime.info
        logger.info(
            "loaded embedding model %s (%.1fM params, %.0f MiB, %d dims, %d tokens per input, %s pooling) "
            "in %.2f s",
            self.source.name, i.n_params / 1e6, i.size_bytes / 2**20, i.n_embd, i.max_tokens, i.pooling,
            time.perf_counter() - started,
        )  # fmt: skip
        return self._runtime

    def is_healthy(self) -> bool:
        return self._load_error is None

    async def embed(
        self, inputs: Sequence[str | Sequence[int]], *, dimensions: int | None = None, one: bool = False
    ) -> tuple[npt.NDArray[np.float32], int]:
        """Vectors for ``inputs`` (rows in order) and the number of tokens they took.

        ``one`` says the request held a single input (errors then name ``input``, not ``input[0]``).
        Raises ``EmbeddingInputError`` for bad input, ``ModelLoadError`` when the model failed to load
        and ``EmbeddingBusy`` when ``max_waiting`` calls already wait.
        """
        if self._executor is None:
            raise RuntimeError("embedding engine used before start()")
        waiting = max(0, self._pending - 1)
        if waiting >= self.max_waiting and self._pending > 0:
            raise EmbeddingBusy(waiting, retry_after=(waiting + 1) * self._service_s)
        loop = asyncio.get_running_loop()
        self._pending += 1
        try:
            return await loop.run_in_executor(self._executor, self._timed_embed, inputs, dimensions, one)
        finally:
            # A cancelled call that had not started is dropped by the executor: its place frees now.
            self._pending -= 1

    def _timed_embed(
        self, inputs: Sequence[str | Sequence[int]], dimensions: int | None, one: bool
    ) -> tuple[npt.NDArray[np.float32], int]:
        started = time.perf_counter()
        try:
            return self._embed(inputs, dimensions, one)
        finally:
            self._service_s = 0.8 * self._service_s + 0.2 * (time.perf_counter() - started)

    def _embed(
        self, inputs: Sequence[str | Sequence[int]], dimensions: int | None, one: bool
    ) -> tuple[npt.NDArray[np.float32], int]:
        runtime = self._ready()
        if dimensions is not None and dimensions > runtime.info.n_embd:
            raise EmbeddingInputError(
                f"dimensions must be at most {runtime.info.n_embd} for this model, got {dimensions}.",
                param="dimensions",
            )
        sequences = [
            self._tokens(runtime, item, "input" if one else f"input[{i}]") for i, item in enumerate(inputs)
        ]
        vectors = runtime.embed(sequences)
        if dimensions is not None and dimensions < runtime.info.n_embd:
            # Matryoshka-style shortening, as OpenAI's text-embedding-3 models do it: cut, then renormalise.
            vectors = np.ascontiguousarray(vectors[:, :dimensions])
            vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.float32(1e-12))
        return vectors, sum(len(s) for s in sequences)

    def _ready(self) -> EmbeddingRuntime:
        """The loaded runtime (loading it now on first use); runs on the engine's thread."""
        if self._runtime is not None:
            return self._runtime
        if self._load_error is None:
            try:
                return self._load()
            except Exception as exc:
                self._load_error = exc
        raise ModelLoadError(f"the embedding model {self.source.name} failed to load: {self._load_error}")

    @staticmethod
    def _tokens(runtime: EmbeddingRuntime, item: str | Sequence[int], param: str) -> Sequence[int]:
        if isinstance(item, str):
            tokens: Sequence[int] = runtime.tokenize(item)
        else:
            bad = [t for t in item if not 0 <= t < runtime.n_vocab]
            if bad:
                raise EmbeddingInputError(
                    f"{param} holds token ids outside the vocabulary (0..{runtime.n_vocab - 1}): {bad[:5]}",
                    param=param,
                )
            tokens = item
        if not tokens:
            raise EmbeddingInputError(f"{param} is empty after tokenization.", param=param)
        if len(tokens) > runtime.max_tokens:
            raise EmbeddingInputError(
                f"This model's maximum context length is {runtime.max_tokens} tokens, however you requested "
                f"{len(tokens)} tokens in {param}. Please reduce the length of the input.",
                param=param,
                too_long=True,
            )
        return tokens

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._runtime is not None:
            self._runtime.close()
            self._runtime = None
