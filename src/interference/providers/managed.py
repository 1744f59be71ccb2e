"""A local GGUF that loads on demand and unloads when idle, inside the pool's memory budget.

The router and the API see an ordinary ``Provider``: the first request to an unloaded model waits for
its load (one load, however many requests wait for it); the load runs in a worker thread, so requests
to other models go on meanwhile.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import ctypes
import enum
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TypeVar

from ..engine import Engine, EngineConfig, ModelLoadError, embedded_model_path
from ..engine.cache_pool import PromptCachePool
from ..engine.chat_template import ChatTemplate, TemplateError
from ..engine.cpu import CpuInfo, choose_repack
from ..engine.engine import DEFAULT_CTX_PER_SLOT
from ..engine.footprint import MIB, estimate_footprint, probe_gguf, sequence_tokens
from ..errors import InsufficientMemory, ModelLoadTimeout, ServiceUnavailable
from ..protocol import ChatCompletionRequest, CompletionRequest, CountTokensRequest, MessagesRequest
from ..settings import EngineOptions
from .base import (
    LOAD_SECONDS_BUCKETS,
    Delta,
    LifecycleStats,
    MessageEvent,
    ModelState,
    Provider,
    ProviderStats,
    aclose_stream,
)
from .local import LocalProvider
from .model_pool import ModelPool

__all__ = ["LoadState", "ManagedLocalProvider", "load_engine"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def load_engine(
    path: str | Path | None,
    options: EngineOptions,
    *,
    cpu: CpuInfo,
    cache_pool: PromptCachePool | None = None,
) -> Engine:
    """Load a GGUF (the embedded model when ``path`` is None); raises ``ModelLoadError``."""
    repack = choose_repack(options.repack, cpu)
    engine = Engine(
        EngineConfig(
            path=Path(path).expanduser() if path else embedded_model_path(),
            ctx_size=options.ctx_size,
            threads=options.threads,
            parallel=options.parallel,
            batch_size=options.batch_size,
            step_target_ms=options.step_target_ms,
            max_queue=options.max_queue,
            cache_type=options.cache_type,
            cache_ram=options.cache_ram,
            cache_pool=cache_pool,
            cache_disk=Path(options.cache_disk).expanduser() if options.cache_disk else None,
            cache_disk_max=options.cache_disk_max,
            request_timeout=options.request_timeout,
            repack=repack.enabled,
        )
    )
    logger.info("loaded %s; weight repacking %s", engine.describe(), repack.reason)
    return engine


def _release_freed_heap() -> None:
    """Hand memory that glibc keeps after an unload back to the system (a no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class LoadState(enum.Enum):
    UNLOADED = "unloaded"
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"


class ManagedLocalProvider(Provider):
    """One GGUF whose engine comes and goes; the pool decides when it may load and when it must go."""

    def __init__(
        self,
        *,
        model_id: str,
        path: Path,
        options: EngineOptions,
        pool: ModelPool,
        cpu: CpuInfo,
        pin: bool = False,
        ttl: float = 0.0,
        preload: bool = False,
    ) -> None:
        self.name = f"local:{model_id}"
        self.model_id = model_id
        self.path = path
        self.pin = pin
        self.ttl = ttl
        self.preload = preload
        self._options = options
        self._pool = pool
        self._cpu = cpu
        self.facts = probe_gguf(path)  # a bad file fails here, at start-up or at discovery
        try:
            ChatTemplate(self.facts.chat_template)
        except TemplateError as exc:
            raise ModelLoadError(f"{path}: {exc}") from None
        self.footprint = estimate_footprint(
            self.facts,
            ctx_size=options.ctx_size,
            parallel=options.parallel,
            batch_size=options.batch_size,
            cache_type=options.cache_type,
            default_per_slot=DEFAULT_CTX_PER_SLOT,
            cache_ram_mib=options.cache_ram,  # a cap within the shared prompt cache, not counted here
        )
        self.memory_mib = self.footprint.total_mib
        self.state = LoadState.UNLOADED
        self.local: LocalProvider | None = None
        self.in_flight = 0
        self.last_used = pool.clock()
        self._load_task: asyncio.Task[None] | None = None
        self._preload_task: asyncio.Task[None] | None = None
        self._loaded_once = False
        self._is_waiting_for_room = False
        self._startup_failure: str | None = None
        self._loads = self._unloads = self._evictions = 0
        self._load_seconds_sum = 0.0
        self._load_buckets = [0] * (len(LOAD_SECONDS_BUCKETS) + 1)
        pool.register(self)

    # ------------------------------------------------------------------ pool's view

    @property
    def evictions(self) -> int:
        """Unloads of this model to make room for another."""
        return self._evictions

    @property
    def holds_memory(self) -> bool:
        return self.state is not LoadState.UNLOADED

    @property
    def is_evictable(self) -> bool:
        return self.state is LoadState.LOADED and self.in_flight == 0 and not self.pin

    def mark_loading(self) -> None:
        self.state = LoadState.LOADING

    def mark_unloading(self) -> None:
        self.state = LoadState.UNLOADING

    async def finish_unload(self, *, reason: str) -> None:
        """Free the engine of a model marked unloading (its requests are done)."""
        local, self.local = self.local, None
        try:
            if local is not None:
                await local.aclose()
                await asyncio.to_thread(_release_freed_heap)
        finally:
            self.state = LoadState.UNLOADED
            self._unloads += 1
            if reason == "evicted":
                self._evictions += 1
            logger.info("unloaded %s (%s)", self.model_id, reason)
            await self._pool.notify()

    async def unload_idle(self, *, reason: str) -> None:
        async with self._pool.changed:
            if not self.is_evictable:
                return
            self.mark_unloading()
        await self.finish_unload(reason=reason)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._pool.start()
        if self.preload and self._preload_task is None:
            self._preload_task = asyncio.create_task(self._preload())

    async def _preload(self) -> None:
        try:
            await self.load()
        except Exception as exc:
            self._startup_failure = str(exc)
            logger.error("the start-up model %s did not load: %s", self.model_id, exc)

    async def aclose(self) -> None:
        for task in (self._preload_task, self._load_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        await self._pool.aclose()
        if self.local is not None:
            local, self.local = self.local, None
            await local.aclose()
        self.state = LoadState.UNLOADED

    @property
    def can_load(self) -> bool:
        return True

    async def load(self) -> None:
        async with self._lease():
            pass

    async def unload(self) -> None:
        changed = self._pool.changed
        async with changed:
            await changed.wait_for(lambda: self.state is not LoadState.LOADING and self.in_flight == 0)
            if self.state is not LoadState.LOADED:
                return
            self.mark_unloading()
        await self.finish_unload(reason="requested")

    @contextlib.asynccontextmanager
    async def _lease(self) -> AsyncIterator[LocalProvider]:
        """The loaded engine, held in use (never evicted) until the block ends."""
        self.in_flight += 1
        self.last_used = self._pool.clock()
        try:
            yield await self._ensure_loaded()
        finally:
            self.in_flight -= 1
            self.last_used = self._pool.clock()
            if self.in_flight == 0:
                await self._pool.notify()

    async def _ensure_loaded(self) -> LocalProvider:
        timeout = self._pool.load_timeout
        deadline = self._pool.clock() + timeout
        while True:
            if self.state is LoadState.LOADED and self.local is not None:
                return self.local
            remaining = deadline - self._pool.clock()
            try:
                if self.state is LoadState.UNLOADING:
                    changed = self._pool.changed
                    async with changed:
                        await asyncio.wait_for(
                            changed.wait_for(lambda: self.state is not LoadState.UNLOADING), remaining
                        )
                    continue
                if self._load_task is None:
                    self._load_task = asyncio.create_task(self._load(deadline))
                    self._load_task.add_done_callback(_retrieve)
                await asyncio.wait_for(asyncio.shield(self._load_task), timeout=max(remaining, 0.0))
            except TimeoutError:
                if self._is_waiting_for_room:
                    raise InsufficientMemory(
                        f"The model '{self.model_id}' (about {self.memory_mib} MiB) does not fit the memory "
                        f"budget of {self._pool.budget_mib} MiB (--memory-budget) beside the models in use, "
                        f"and none became idle within {timeout:g} s (--load-timeout). Retry later."
                    ) from None
                raise ModelLoadTimeout(
                    f"The model '{self.model_id}' did not load within {timeout:g} s (--load-timeout). "
                    "Retry shortly."
                ) from None

    async def _load(self, deadline: float) -> None:
        try:
            self._is_waiting_for_room = True
            try:
                await self._pool.reserve(self, deadline)
            finally:
                self._is_waiting_for_room = False
            started = self._pool.clock()
            try:
                engine = await asyncio.to_thread(
                    load_engine, self.path, self._options, cpu=self._cpu, cache_pool=self._pool.cache_pool
                )
                local = LocalProvider(engine, name=self.name)
                await local.start()
            except BaseException as exc:
                self.state = LoadState.UNLOADED
                await self._pool.notify()
                if isinstance(exc, ModelLoadError):
                    raise ServiceUnavailable(
                        f"The model '{self.model_id}' could not be loaded: {exc}"
                    ) from None
                raise
            seconds = self._pool.clock() - started
            self.local = local
            self.state = LoadState.LOADED
            self._loaded_once = True
            self._loads += 1
            self._load_seconds_sum += seconds
            self._load_buckets[bisect.bisect_left(LOAD_SECONDS_BUCKETS, seconds)] += 1
            await self._pool.notify()
        finally:
            self._load_task = None

    # ------------------------------------------------------------------ reports

    def is_healthy(self) -> bool:
        if self._startup_failure is not None:
            return False
        return self.local is None or self.local.is_healthy()

    def is_ready(self) -> bool:
        return not self.preload or self._loaded_once

    def stats(self) -> ProviderStats | None:
        return self.local.stats() if self.local is not None else None

    def model_state(self) -> ModelState:
        status = {LoadState.LOADING: "loading", LoadState.UNLOADED: "unloaded"}.get(self.state, "loaded")
        return ModelState(
            status=status,  # type: ignore[arg-type]
            context_length=sequence_tokens(self.facts, self.footprint.n_ctx),
            size_mb=round(self.facts.file_bytes / MIB, 1),
            memory_mb=self.memory_mib,
        )

    def lifecycle(self) -> LifecycleStats:
        return LifecycleStats(
            is_loaded=self.state is LoadState.LOADED,
            loads=self._loads,
            unloads=self._unloads,
            evictions=self._evictions,
            load_seconds_sum=self._load_seconds_sum,
            load_seconds_buckets=tuple(self._load_buckets),
        )

    # ------------------------------------------------------------------ requests

    def chat(self, request: ChatCompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        return self._leased(lambda local: local.chat(request, model=model))

    def complete(self, request: CompletionRequest, *, model: str) -> AsyncIterator[Delta]:
        return self._leased(lambda local: local.complete(request, model=model))

    def messages(self, request: MessagesRequest, *, model: str) -> AsyncIterator[Delta | MessageEvent]:
        return self._leased(lambda local: local.messages(request, model=model))

    async def _leased(self, open_stream: Callable[[LocalProvider], AsyncIterator[T]]) -> AsyncIterator[T]:
        """The loaded model's stream, holding a lease on it (so it is not unloaded) until the stream ends."""
        async with self._lease() as local:
            stream = open_stream(local)
            try:
                async for item in stream:
                    yield item
            finally:
                await aclose_stream(stream)

    async def count_tokens(self, request: CountTokensRequest, *, model: str) -> int:
        """Counting needs the model's tokenizer: the model loads for it, as for a request."""
        async with self._lease() as local:
            return await local.count_tokens(request, model=model)


def _retrieve(task: asyncio.Task[None]) -> None:
    """Every waiter may have given up on a load: read its outcome so asyncio does not warn about it."""
    if not task.cancelled():
        task.exception()
