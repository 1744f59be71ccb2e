"""Build the routes (and the providers behind them) that a ``Settings`` describes."""

from __future__ import annotations

import logging
from pathlib import Path

from ..config import EngineOptions, LocalDeployment, OpenAIDeployment, Settings
from ..engine import Engine, EngineConfig, embedded_model_path, model_id_for
from ..router import Deployment, Route
from .base import Provider
from .local import LocalProvider

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
            request_timeout=options.request_timeout,
        )
    )
    logger.info("loaded %s", engine.describe())
    return engine


def _provider(deployment: LocalDeployment | OpenAIDeployment, engines: dict[str, Provider]) -> Provider:
    if isinstance(deployment, LocalDeployment):
        key = str(deployment.path)
        if key not in engines:
            engine = load_engine(deployment.path, deployment)
            engines[key] = LocalProvider(engine, name=f"local:{model_id_for(engine.info.path)}")
        return engines[key]
    from .upstream import UpstreamProvider  # only gateway configs need httpx machinery

    return UpstreamProvider(deployment)


def build_routes(settings: Settings) -> list[Route]:
    """Configured models first (they win alias clashes), then the default local model."""
    engines: dict[str, Provider] = {}
    routes: list[Route] = []
    for entry in settings.models:
        deployments = []
        for d in entry.deployments:
            provider = _provider(d, engines)
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
    provider = _provider(default, engines)
    assert isinstance(provider, LocalProvider)
    name = settings.model_name or model_id_for(provider.engine.info.path)
    routes.append(Route(name=name, deployments=[Deployment(provider, name)], aliases=settings.aliases))
    return routes
