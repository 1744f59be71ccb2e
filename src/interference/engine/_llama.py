"""A typed wrapper over llama.cpp's C API (through llama-cpp-python's ctypes bindings).

The text-generation engine's only door to ``llama_cpp`` (embeddings have their own, in
``embeddings.py``). One ``LlamaRuntime`` owns a model, one context with
``n_seq`` sequences, its memory handle and one reusable batch. It is not thread-safe: the scheduler
thread is its only user once serving starts.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp.llama_cpp as C
import numpy as np
import numpy.typing as npt

__all__ = [
    "LlamaRuntime",
    "ModelInfo",
    "ModelLoadError",
    "model_params",
    "physical_cores",
    "quiet_llama_logs",
    "tokenize",
]

logger = logging.getLogger(__name__)


_GGML_TYPES = {"f16": 1, "q4_0": 2, "q8_0": 8}  # ggml_type values


class ModelLoadError(Exception):
    """The GGUF is missing, unreadable or not a model llama.cpp can load."""


# Numpy views of logits rows kept by address (a handful in use: one per output row of a step).
_MAX_ROW_VIEWS = 256


def _address_function(function: Any, *argtypes: Any) -> Any:
    """A bound C function of the bindings, re-declared to return its pointer as a plain address."""
    address = ctypes.cast(function, ctypes.c_void_p).value
    if not address:
        raise ModelLoadError("the llama.cpp bindings have no address for a function they bind")
    return ctypes.CFUNCTYPE(ctypes.c_void_p, *argtypes)(address)


def quiet_llama_logs(*, verbose: bool = False) -> None:
    """llama.cpp prints every line to stderr by default; keep only what was asked for."""
    level = logging.DEBUG if verbose else logging.CRITICAL + 1
    logging.getLogger("llama-cpp-python").setLevel(level)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """Facts read from a loaded GGUF."""

    path: Path
    description: str
    size_bytes: int
    n_params: int
    n_ctx_train: int
    n_vocab: int
    chat_template: str | None
    bos_token: str
    eos_token: str
    add_bos: bool


def model_params(*, repack: bool) -> Any:
    """llama.cpp's model parameters; ``repack`` False keeps weights out of the extra buffer types
    (see ``cpu.py``: the AMX one crashes)."""
    mparams = C.llama_model_default_params()
    mparams.use_extra_bufts = repack
    return mparams


def tokenize(vocab: Any, text: str, *, add_special: bool, parse_special: bool) -> list[int]:
    """Token ids of ``text`` with a model's vocabulary."""
    data = text.encode("utf-8")
    cap = len(data) + 8
    out = (C.llama_token * cap)()
    n = C.llama_tokenize(vocab, data, len(data), out, cap, add_special, parse_special)
    if n < 0:  # the buffer was too small: -n is the size needed
        cap = -n
        out = (C.llama_token * cap)()
        n = C.llama_tokenize(vocab, data, len(data), out, cap, add_special, parse_special)
    return list(out[:n])


def _bindings_version() -> str:
    try:
        return importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def physical_cores() -> int:
    """A good thread count for llama.cpp: physical cores, not hyper-threads."""
    try:
        siblings: set[str] = set()
        for cpu in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/topology/thread_siblings_list"):
            siblings.add(cpu.read_text().strip())
        if siblings:
            return len(siblings)
    except OSError:
        pass
    return max(1, (os.cpu_count() or 2))


class LlamaRuntime:
    """Model + context + batch; every llama.cpp call the engine makes goes through here."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int,
        default_ctx_per_seq: int = 2048,
        n_seq: int,
        n_batch: int,
        n_threads: int,
        cache_type: str = "f16",
        repack: bool,
        n_ubatch: int = 512,
        flash_attn: bool | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelLoadError(f"model file not found: {self.path}")
        C.llama_backend_init()
        self._model = C.llama_model_load_from_file(str(self.path).encode(), model_params(repack=repack))
        if not self._model:
            raise ModelLoadError(f"not a loadable GGUF model: {self.path}")
        self._vocab = C.llama_model_get_vocab(self._model)
        self.n_vocab = int(C.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(C.llama_model_n_ctx_train(self._model))

        # One KV pool shared by the sequences (n_ctx 0: default_ctx_per_seq for each of them); any one
        # sequence may use up to the model's trained context of it.
        pool = n_ctx if n_ctx else default_ctx_per_seq * n_seq
        cparams = C.llama_context_default_params()
        cparams.n_ctx = pool
        cparams.n_batch = n_batch
        cparams.n_ubatch = min(n_batch, n_ubatch)
        cparams.n_seq_max = n_seq
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.kv_unified = True
        cparams.no_perf = True
        if cache_type != "f16":
            # A quantized KV cache halves (q8_0) or quarters (q4_0) its memory; llama.cpp needs flash
            # attention to read a quantized V cache.
            cparams.type_k = cparams.type_v = _GGML_TYPES[cache_type]
            cparams.flash_attn_type = C.LLAMA_FLASH_ATTN_TYPE_ENABLED
        elif flash_attn is not None:  # None: llama.cpp decides (auto)
            cparams.flash_attn_type = (
                C.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else C.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        self._ctx = C.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            C.llama_model_free(self._model)
            raise ModelLoadError(f"could not create a context of {n_ctx} tokens for {self.path}")
        self._mem = C.llama_get_memory(self._ctx)
        # What a saved sequence state depends on besides the model file (the disk cache checks it).
        self.kv_settings: dict[str, int | str] = {
            "n_ctx": int(C.llama_n_ctx(self._ctx)),
            "n_seq": n_seq,
            "type_k": int(cparams.type_k),
            "type_v": int(cparams.type_v),
            "flash_attn": int(cparams.flash_attn_type),
            "kv_unified": 1,
            "llama_cpp": _bindings_version(),
        }
        self.n_ctx = int(C.llama_n_ctx(self._ctx))
        self.n_seq = int(C.llama_n_seq_max(self._ctx))
        # The longest one sequence may be: the whole pool, never more than the model was trained on.
        self.n_ctx_seq = min(self.n_ctx, self.n_ctx_train) if self.n_ctx_train > 0 else self.n_ctx
        self.n_batch = int(C.llama_n_batch(self._ctx))
        self._batch = C.llama_batch_init(self.n_batch, 0, 1)
        self.batch_size = 0
        # Token bytes by id, filled on first use. Both the scheduler thread and the event loop read
        # pieces, so each lookup that misses renders into a buffer of its own.
        self._pieces: dict[int, bytes] = {}
        # llama_get_logits_ith returning a plain address, and a numpy view per address: see ``logits``.
        self._logits_at = _address_function(C.llama_get_logits_ith, ctypes.c_void_p, ctypes.c_int32)
        self._logit_rows: dict[int, npt.NDArray[np.float32]] = {}
        self.info = self._read_info()

    # ------------------------------------------------------------------ metadata

    def meta(self, key: str) -> str | None:
        size = C.llama_model_meta_val_str(self._model, key.encode(), None, 0)
        if size < 0:
            return None
        buf = ctypes.create_string_buffer(size + 1)
        C.llama_model_meta_val_str(self._model, key.encode(), buf, size + 1)
        return buf.value.decode("utf-8", errors="replace")

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        raw = C.llama_vocab_get_text(self._vocab, token)
        return raw.decode("utf-8", errors="replace") if raw else ""

    def _read_info(self) -> ModelInfo:
        desc = ctypes.create_string_buffer(256)
        C.llama_model_desc(self._model, desc, len(desc))
        return ModelInfo(
            path=self.path,
            description=desc.value.decode(errors="replace"),
            size_bytes=int(C.llama_model_size(self._model)),
            n_params=int(C.llama_model_n_params(self._model)),
            n_ctx_train=self.n_ctx_train,
            n_vocab=self.n_vocab,
            chat_template=self.meta("tokenizer.chat_template"),
            bos_token=self._token_text(C.llama_vocab_bos(self._vocab)),
            eos_token=self._token_text(C.llama_vocab_eos(self._vocab)),
            add_bos=bool(C.llama_vocab_get_add_bos(self._vocab)),
        )

    # ------------------------------------------------------------------ text

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        return tokenize(self._vocab, text, add_special=add_special, parse_special=parse_special)

    def piece(self, token: int) -> bytes:
        """Raw bytes of one token (possibly part of a UTF-8 sequence); control tokens render empty."""
        cached = self._pieces.get(token)
        if cached is not None:
            return cached
        buf = ctypes.create_string_buffer(64)
        n = C.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = C.llama_token_to_piece(self._vocab, token, buf, -n, 0, False)
        data = buf.raw[:n]
        self._pieces[token] = data
        return data

    def is_eog(self, token: int) -> bool:
        return bool(C.llama_vocab_is_eog(self._vocab, token))

    def is_valid_token(self, token: int) -> bool:
        return 0 <= token < self.n_vocab

    # ------------------------------------------------------------------ batch and decode

    def batch_clear(self) -> None:
        self.batch_size = 0

    def batch_add(self, token: int, pos: int, seq: int, *, logits: bool) -> int:
        """Append one token; returns its row (the index to sample from when ``logits``)."""
        i = self.batch_size
        if i >= self.n_batch:
            raise IndexError("batch is full")
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        self.batch_size = i + 1
        return i

    def decode(self) -> int:
        """Run the batch; 0 ok, 1 no KV room (rolled back), other values are failures."""
        self._batch.n_tokens = self.batch_size
        return int(C.llama_decode(self._ctx, self._batch))

    # ------------------------------------------------------------------ sampling

    def sample(self, sampler: Any, row: int) -> int:
        return int(C.llama_sampler_sample(sampler, self._ctx, row))

    def logits(self, row: int) -> npt.NDArray[np.float32]:
        """A view of one output row's logits, valid only until the next decode.

        The rows live in llama.cpp's output buffer, at the same addresses step after step, so the
        view of an address is made once: ``np.ctypeslib.as_array`` on the returned pointer went
        through numpy's array-interface machinery every time, 70 us a token at one stream (its
        code is cold after a decode), most of a greedy token's sampling time. A view is handed out
        only for the address llama.cpp has just returned, so one of a buffer since replaced is
        never read.
        """
        address = self._logits_at(self._ctx, row)
        if not address:
            raise ValueError(f"batch row {row} has no logits")
        view = self._logit_rows.get(address)
        if view is None:
            if len(self._logit_rows) >= _MAX_ROW_VIEWS:  # the buffer moved often: start over
                self._logit_rows.clear()
            row_type = ctypes.c_float * self.n_vocab
            memory = memoryview(row_type.from_address(address)).cast("B")
            view = self._logit_rows[address] = np.frombuffer(memory, np.float32)
        return view

    def log_probs(self, row: int) -> npt.NDArray[np.float32]:
        """Log-softmax of one output row's logits."""
        logits = self.logits(row)
        shifted: npt.NDArray[np.float32] = logits - logits.max()
        result: npt.NDArray[np.float32] = shifted - np.log(np.exp(shifted).sum())
        return result

    @property
    def ctx(self) -> Any:
        return self._ctx

    @property
    def vocab(self) -> Any:
        return self._vocab

    # ------------------------------------------------------------------ memory

    def seq_rm(self, seq: int, p0: int, p1: int = -1) -> bool:
        return bool(C.llama_memory_seq_rm(self._mem, seq, p0, p1))

    def seq_clear(self, seq: int) -> None:
        C.llama_memory_seq_rm(self._mem, seq, -1, -1)

    def clear(self) -> None:
        C.llama_memory_clear(self._mem, True)

    def seq_copy(self, src: int, dst: int) -> None:
        """Make ``dst`` hold everything ``src`` holds (whole sequences only).

        In the unified pool the copy shares the cells (no data moves); it is still treated as pending
        until the next ``decode``, so ``src`` and ``dst`` are not read or replaced as state before it.
        """
        C.llama_memory_seq_cp(self._mem, src, dst, -1, -1)

    # ------------------------------------------------------------------ sequence state (prompt cache)

    def state_size(self, seq: int) -> int:
        """Bytes ``state_save`` needs for one sequence."""
        return int(C.llama_state_seq_get_size(self._ctx, seq))

    def state_save(self, seq: int, into: bytearray | None = None) -> tuple[bytearray, int]:
        """A copy of one sequence's KV in host memory (cells, positions and data): (buffer, length).

        ``into`` is reused when given (grown when too small; its bytes past the length are left as
        they are), so a recycled buffer spares the allocation and page faults of a new one.
        """
        size = self.state_size(seq)
        data = bytearray(size) if into is None else into
        if len(data) < size:
            data += bytes(size - len(data))
        if not size:
            return data, 0
        view = (ctypes.c_uint8 * size).from_buffer(data)
        n = int(C.llama_state_seq_get_data(self._ctx, view, size, seq))
        del view
        return data, n

    def state_restore(self, seq: int, data: bytearray, length: int | None = None) -> bool:
        """Replace ``seq``'s KV with a saved state (from any sequence), the first ``length`` bytes of
        ``data`` (all of it by default); False when llama.cpp refused it."""
        n = len(data) if length is None else min(length, len(data))
        if n <= 0:
            return False
        view = (ctypes.c_uint8 * n).from_buffer(data)
        return int(C.llama_state_seq_set_data(self._ctx, view, n, seq)) > 0

    def close(self) -> None:
        if self._ctx:
            C.llama_batch_free(self._batch)
            C.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            C.llama_model_free(self._model)
            self._model = None
