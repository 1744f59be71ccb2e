"""Build the routes (and the providers behind them) that a ``Settings`` describes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import AnthropicDeployment, EngineOptions, LocalDeployment, Settings, UpstreamDeployment
from ..engine import Engine, EngineConfig, embedded_model_path, model_id_for
from ..engine.cpu import CpuInfo, choose_repack, read_cpu_info
from ..router import Deployment, Route
from .base import Provider
from .local import LocalProvider
from .local_embeddings import EMBEDDING_ALIASES, embedding_provider

if TYPE_CHECKING:
    from .upstream import UpstreamPool

__all__ = ["build_routes", "load_engine"]

logger = logging.getLogger(__name__)


def load_engine(path: str | None, options: EngineOptions, *, cpu: CpuInfo) -> Engine:
    """Load a GGUF (the embedded model when ``path`` is None); raises ``ModelLoadError``."""
    gguf = Path(path).expanduser() if path else embedded_model_path()
    repack = choose_repack(options.repack, cpu)
    engine = Engine(
        EngineConfig(
            path=gguf,
            ctx_size=options.ctx_size,
            threads=options.threads,
            parallel=options.parallel,
            batch_size=options.batch_size,
            max_queue=options.max_queue,
            cache_type=options.cache_type,
            cache_ram=options.cache_ram,
            request_timeout=options.request_timeout,
            repack=repack.enabled,
        )
    )
    logger.info("loaded %s; weight repacking %s", engine.describe(), repack.reason)
    return engine


@dataclass(slots=True)
class _Shared:
    """What deployments share: one engine per GGUF, one HTTP client pool for every upstream."""

    cpu: CpuInfo
    engines: dict[str, Provider] = field(default_factory=dict)
    pool: UpstreamPool | None = None


def _provider(deployment: LocalDeployment | UpstreamDeployment, shared: _Shared) -> Provider:
    if isinstance(deployment, LocalDeployment):
        key = str(deployment.path)
        if key not in shared.engines:
            engine = load_engine(deployment.path, deployment, cpu=shared.cpu)
            shared.engines[key] = LocalProvider(engine, name=f"local:{model_id_for(engine.info.path)}")
        return shared.engines[key]
    from .anthropic import AnthropicProvider  # only gateway configs need httpx machinery
    from .upstream import UpstreamPool, UpstreamProvider

    if shared.pool is None:
        shared.pool = UpstreamPool()
    if isinstance(deployment, AnthropicDeployment):
        return AnthropicProvider(deployment, pool=shared.pool)
    return UpstreamProvider(deployment, pool=shared.pool)


def build_routes(settings: Settings) -> list[Route]:
    """Configured models first (they win alias clashes), then the default local model."""
    shared = _Shared(cpu=read_cpu_info())  # read once: every engine decides on repacking from it
    routes: list[Route] = []
    for entry in settings.models:
        deployments = []
        for d in entry.deployments:
            provider = _provider(d, shared)
            upstream_name = d.model if isinstance(d, UpstreamDeployment) and d.model else entry.name
            deployments.append(Deployment(provider=provider, model=upstream_name, weight=d.weight))
        routes.append(
            Route(
                name=entry.name,
                deployments=deployments,
                aliases=entry.aliases,
                strategy=entry.routing,
                cooldown=entry.cooldown,
            )
        )
    default = LocalDeployment(path=settings.model, **settings.engine_options.model_dump())
    provider = _provider(default, shared)
    assert isinstance(provider, LocalProvider)
    name = settings.model_name or model_id_for(provider.engine.info.path)
    routes.append(
        Route(name=name, deployments=[Deployment(provider, name)], aliases=settings.aliases, is_default=True)
    )
    embedder = embedding_provider(settings, repack=choose_repack(settings.repack, shared.cpu).enabled)
    if embedder is not None:
        deployment = Deployment(embedder, embedder.model_name)
        routes.append(
            Route(
                name=embedder.model_name,
                deployments=[deployment],
                aliases=EMBEDDING_ALIASES,
                kind="embedding",
            )
        )
    return routes
