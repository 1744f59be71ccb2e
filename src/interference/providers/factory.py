"""Build the routes (and the providers behind them) that a ``Settings`` describes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import EngineOptions, LocalDeployment, OpenAIDeployment, Settings
from ..engine import Engine, EngineConfig, embedded_model_path, model_id_for
from ..router import Deployment, Route
from .base import Provider
from .local import LocalProvider
from .local_embeddings import EMBEDDING_ALIASES, embedding_provider

if TYPE_CHECKING:
    from .upstream import UpstreamPool

__all__ = ["build_routes", "load_engine"]

logger = logging.getLogger(__name__)


def load_engine(path: str | None, options: EngineOptions) -> Engine:
    """Load a GGUF (the embedded model when ``path`` is None); raises ``ModelLoadError``."""
    gguf = Path(path).expanduser() if path else embedded_model_path()
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
        )
    )
    logger.info("loaded %s", engine.describe())
    return engine


@dataclass(slots=True)
class _Shared:
    """What deployments share: one engine per GGUF, one HTTP client pool for every upstream."""

    engines: dict[str, Provider] = field(default_factory=dict)
    pool: UpstreamPool | None = None


def _provider(deployment: LocalDeployment | OpenAIDeployment, shared: _Shared) -> Provider:
    if isinstance(deployment, LocalDeployment):
        key = str(deployment.path)
        if key not in shared.engines:
            engine = load_engine(deployment.path, deployment)
            shared.engines[key] = LocalProvider(engine, name=f"local:{model_id_for(engine.info.path)}")
        return shared.engines[key]
    from .upstream import UpstreamPool, UpstreamProvider  # only gateway configs need httpx machinery

    if shared.pool is None:
        shared.pool = UpstreamPool()
    return UpstreamProvider(deployment, pool=shared.pool)


def build_routes(settings: Settings) -> list[Route]:
    """Configured models first (they win alias clashes), then the default local model."""
    shared = _Shared()
    routes: list[Route] = []
    for entry in settings.models:
        deployments = []
        for d in entry.deployments:
            provider = _provider(d, shared)
            upstream_name = d.model if isinstance(d, OpenAIDeployment) and d.model else entry.name
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
    routes.append(Route(name=name, deployments=[Deployment(provider, name)], aliases=settings.aliases))
    embedder = embedding_provider(settings)
    if embedder is not None:
        deployment = Deployment(embedder, embedder.model_name)
        routes.append(Route(name=embedder.model_name, deployments=[deployment], aliases=EMBEDDING_ALIASES))
    return routes
