"""Prometheus metrics at GET /metrics: request counts and latency, plus engine gauges read at scrape time."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..providers.base import LOAD_SECONDS_BUCKETS
from ..router import Router

__all__ = ["Metrics", "MetricsMiddleware"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


# Each ProviderStats field exported, by field: its metric name (after ``interference_engine_``) and help.
_COUNTERS = (
    ("prompt_tokens", "prompt_tokens", "Prompt tokens"),
    ("cached_tokens", "cached_tokens", "Prompt tokens reused from the KV cache"),
    ("completion_tokens", "completion_tokens", "Generated tokens"),
    ("requests_finished", "requests_finished", "Completed generations"),
    ("steps", "steps", "Batched decode steps"),
    ("decode_seconds", "decode_seconds", "Time spent in llama_decode"),
    ("cache_hits", "prompt_cache_hits", "Admissions restored from the prompt cache"),
    ("cache_misses", "prompt_cache_misses", "Admissions that restored nothing from the prompt cache"),
    ("cache_restored_tokens", "prompt_cache_restored_tokens", "Prompt tokens restored from the prompt cache"),
    ("cache_saves", "prompt_cache_saves", "Slot states saved to the prompt cache"),
    ("cache_evictions", "prompt_cache_evictions", "Prompt cache entries evicted to stay within --cache-ram"),
    (
        "cache_released_slots",
        "prompt_cache_released_slots",
        "Idle slots that gave their KV cells back because the prompt cache holds their state",
    ),
    ("cache_seconds", "prompt_cache_seconds", "Time spent saving and restoring prompt cache states"),
    ("cache_disk_hits", "prompt_cache_disk_hits", "Admissions restored from the prompt cache's disk tier"),
    ("cache_disk_writes", "prompt_cache_disk_writes", "States written to the prompt cache's disk tier"),
    (
        "shared_prompt_tokens",
        "shared_prompt_tokens",
        "Prompt tokens copied between the choices of n > 1 requests instead of prefilled",
    ),
)
_GAUGES = (
    ("cache_bytes", "prompt_cache_bytes", "Bytes held by the prompt cache"),
    ("cache_entries", "prompt_cache_entries", "Entries in the prompt cache"),
    ("cache_disk_bytes", "prompt_cache_disk_bytes", "Bytes held by the prompt cache's disk tier"),
    ("cache_disk_entries", "prompt_cache_disk_entries", "Files in the prompt cache's disk tier"),
    (
        "cache_pause_max_seconds",
        "prompt_cache_pause_max_seconds",
        "Longest time one admission spent saving and restoring states (other streams wait)",
    ),
)


class _EngineCollector(Collector):
    def __init__(self, router: Router) -> None:
        self._router = router

    def collect(self) -> Iterator[Metric]:
        labels = ["model"]
        active = GaugeMetricFamily(
            "interference_engine_slots_active", "Sequences holding a slot", labels=labels
        )
        total = GaugeMetricFamily("interference_engine_slots", "Slots (parallel sequences)", labels=labels)
        waiting = GaugeMetricFamily(
            "interference_engine_requests_waiting", "Requests waiting for a slot", labels=labels
        )
        counters = {
            k: CounterMetricFamily(f"interference_engine_{n}", h, labels=labels) for k, n, h in _COUNTERS
        }
        gauges = {k: GaugeMetricFamily(f"interference_engine_{n}", h, labels=labels) for k, n, h in _GAUGES}
        for provider in self._router.providers:
            stats = provider.stats()
            if stats is None:
                continue
            name = [provider.name]
            active.add_metric(name, stats.slots_active)
            total.add_metric(name, stats.slots_total)
            waiting.add_metric(name, stats.requests_waiting)
            for key, family in counters.items():
                family.add_metric(name, float(getattr(stats, key)))
            for key, gauge in gauges.items():
                gauge.add_metric(name, float(getattr(stats, key)))
        yield from (active, total, waiting, *counters.values(), *gauges.values())


class _LifecycleCollector(Collector):
    """Loads, unloads and evictions of the models that load on demand."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def collect(self) -> Iterator[Metric]:
        labels = ["model"]
        loaded = GaugeMetricFamily("interference_models_loaded", "Local models in memory", labels=labels)
        loads = CounterMetricFamily("interference_model_loads", "Model loads", labels=labels)
        unloads = CounterMetricFamily("interference_model_unloads", "Model unloads", labels=labels)
        evictions = CounterMetricFamily(
            "interference_model_evictions", "Unloads to make room in the memory budget", labels=labels
        )
        seconds = HistogramMetricFamily(
            "interference_model_load_seconds", "Time to load a model", labels=labels
        )
        for provider in self._router.providers:
            life = provider.lifecycle()
            if life is None:
                continue
            name = [provider.name]
            loaded.add_metric(name, 1.0 if life.is_loaded else 0.0)
            loads.add_metric(name, float(life.loads))
            unloads.add_metric(name, float(life.unloads))
            evictions.add_metric(name, float(life.evictions))
            bounds = [*(str(b) for b in LOAD_SECONDS_BUCKETS), "+Inf"]
            cumulative = list(itertools.accumulate(life.load_seconds_buckets))
            seconds.add_metric(
                name, [(b, float(c)) for b, c in zip(bounds, cumulative, strict=True)], life.load_seconds_sum
            )
        yield from (loaded, loads, unloads, evictions, seconds)


class _MemoryCollector(Collector):
    """The memory budget of the local models and what uses it (``MemoryReport``), in bytes."""

    def __init__(self, router: Router) -> None:
        self._router = router

    def collect(self) -> Iterator[Metric]:
        report = self._router.memory()
        if report is None:
            return
        mib = float(2**20)
        parts = {
            "budget": (report.budget_mb or 0, "The memory budget (0: none)"),
            "models": (report.models_mb, "Weights, KV and compute buffers of the local models in memory"),
            "embedding": (report.embedding_mb, "The embedding model's weights and buffers"),
            "kv": (report.kv_mb, "KV pools of the local models in memory"),
            "prompt_cache": (report.prompt_cache_mb, "Held by the prompt cache all local engines share"),
            "prompt_cache_limit": (report.prompt_cache_limit_mb, "What the shared prompt cache may hold now"),
        }
        for part, (value, text) in parts.items():
            gauge = GaugeMetricFamily(f"interference_memory_{part}_bytes", text)
            gauge.add_metric([], value * mib)
            yield gauge
        released = CounterMetricFamily(
            "interference_memory_prompt_cache_released_bytes", "Prompt cache bytes given back to load models"
        )
        released.add_metric([], report.prompt_cache_released_mb * mib)
        yield released


class Metrics:
    """One registry per app (no global state)."""

    def __init__(self, router: Router) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "interference_http_requests", "HTTP requests", ["path", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "interference_http_request_seconds",
            "Time to the response headers",
            ["path"],
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.registry.register(_EngineCollector(router))
        self.registry.register(_LifecycleCollector(router))
        self.registry.register(_MemoryCollector(router))

    def render(self, request: Request) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE)


_TRACKED = (
    "/chat/completions",
    "/completions",
    "/embeddings",
    "/responses",
    "/messages/count_tokens",
    "/messages",
    "/models",
)


def _path_label(path: str) -> str:
    bare = path.removeprefix("/v1")
    for tracked in _TRACKED:
        if bare.startswith(tracked):
            return tracked
    return "other"


class MetricsMiddleware:
    """Counts requests by path and status; times them to the response headers."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self.app = app
        self._metrics = metrics
        # Each (path label, status) pair's children, looked up once: at most 8 labels times 500 statuses.
        self._children: dict[tuple[str, int], tuple[Counter, Histogram]] = {}

    def _observe(self, label: str, status: int, seconds: float) -> None:
        children = self._children.get((label, status))
        if children is None:
            metrics = self._metrics
            children = (metrics.requests.labels(label, str(status)), metrics.latency.labels(label))
            self._children[(label, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        label = _path_label(scope["path"])

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                self._observe(label, message["status"], time.perf_counter() - started)
            await send(message)

        await self.app(scope, receive, send_wrapper)
