"""The composition root: settings → engines → providers → router → app.

Only the entry points (``cli.py``, ``ray/``) import this module; nothing below it does. ``build_router``
turns a ``Settings`` into the providers and the ``Router`` over them, ``build_app`` hands that router to
``api.app.create_app``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .engine import ModelLoadError, embedded_model_path, model_id_for
from .engine.cache_pool import PromptCachePool
from .engine.cpu import CpuInfo, choose_repack, read_cpu_info
from .memory_budget import resolve_budget
from .providers.base import Provider
from .providers.local_embeddings import EMBEDDING_ALIASES, embedding_provider
from .providers.managed import ManagedLocalProvider
from .providers.model_pool import MIB, ModelPool
from .router import Deployment, Route, Router
from .settings import (
    AnthropicDeployment,
    EngineOptions,
    LocalDeployment,
    ModelEntry,
    OpenAIDeployment,
    Settings,
    UpstreamDeployment,
)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from .providers.upstream import UpstreamPool

__all__ = ["build_app", "build_router", "build_routes", "deployment_options"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Shared:
    """What deployments share: one engine per GGUF, one HTTP client pool for every upstream."""

    cpu: CpuInfo
    models: ModelPool
    settings: Settings
    engines: dict[Path, ManagedLocalProvider] = field(default_factory=dict)
    pool: UpstreamPool | None = None
    # Files of the models dir that could not be read, by (path, mtime): not probed again until they change.
    unreadable: set[tuple[Path, float]] = field(default_factory=set)


def _local(
    path: Path,
    options: EngineOptions,
    shared: _Shared,
    *,
    entry: ModelEntry | None = None,
    preload: bool = False,
) -> ManagedLocalProvider:
    path = path.expanduser().resolve()
    provider = shared.engines.get(path)
    if provider is None:
        ttl = shared.settings.model_ttl
        if entry is not None and entry.ttl is not None:
            ttl = entry.ttl
        provider = ManagedLocalProvider(
            model_id=model_id_for(path),
            path=path,
            options=options,
            pool=shared.models,
            cpu=shared.cpu,
            pin=entry.pin if entry is not None else False,
            ttl=ttl,
            preload=preload,
        )
        shared.engines[path] = provider
    else:  # one GGUF behind several names: pinned or loaded at start-up if any of them asks
        provider.pin = provider.pin or (entry is not None and entry.pin)
        provider.preload = provider.preload or preload
    return provider


def deployment_options(deployment: LocalDeployment, defaults: EngineOptions) -> EngineOptions:
    """A local deployment's engine options: the command line's and environment's (``defaults``), with the
    keys the deployment sets itself on top."""
    own = {k: getattr(deployment, k) for k in deployment.model_fields_set if k in EngineOptions.model_fields}
    return EngineOptions(**{**defaults.model_dump(), **own})


def _provider(
    deployment: LocalDeployment | UpstreamDeployment, shared: _Shared, entry: ModelEntry
) -> Provider:
    if isinstance(deployment, LocalDeployment):
        path = Path(deployment.path) if deployment.path else embedded_model_path()
        return _local(
            path, deployment_options(deployment, shared.settings.engine_options), shared, entry=entry
        )
    from .providers.anthropic import AnthropicProvider  # only gateway configs need httpx machinery
    from .providers.upstream import UpstreamPool, UpstreamProvider

    if shared.pool is None:
        shared.pool = UpstreamPool()
    if isinstance(deployment, AnthropicDeployment):
        return AnthropicProvider(deployment, pool=shared.pool)
    if isinstance(deployment, OpenAIDeployment) and deployment.responses:
        from .providers.openai_responses import ResponsesUpstreamProvider

        return ResponsesUpstreamProvider(deployment, pool=shared.pool)
    return UpstreamProvider(deployment, pool=shared.pool)


def _scan_models_dir(shared: _Shared, known: set[str]) -> list[Route]:
    """Routes for ``*.gguf`` files in the models dir that no route serves yet."""
    directory = shared.settings.models_dir
    if directory is None:
        return []
    routes: list[Route] = []
    try:
        files = sorted(Path(directory).expanduser().glob("*.gguf"))
    except OSError as exc:
        logger.warning("cannot list the models dir %s: %s", directory, exc)
        return []
    for path in files:
        name = model_id_for(path)
        if name in known or not path.is_file():
            continue
        try:
            stamp = (path.resolve(), path.stat().st_mtime)
        except OSError:
            continue
        if stamp in shared.unreadable:
            continue
        try:
            provider = _local(path, shared.settings.engine_options, shared)
        except ModelLoadError as exc:
            shared.unreadable.add(stamp)
            logger.warning("skipping %s in the models dir: %s", path.name, exc)
            continue
        known.add(name)
        routes.append(Route(name=name, deployments=[Deployment(provider, name)]))
    return routes


def build_routes(settings: Settings) -> list[Route]:
    """The routes a ``Settings`` describes (``build_router`` also picks up files added to the models dir)."""
    return build_router(settings).routes


def build_router(settings: Settings) -> Router:
    """Configured models first (they win alias clashes), then the default local model, then the models dir."""
    shared = _Shared(
        cpu=read_cpu_info(),  # read once: every engine decides on repacking from it
        models=ModelPool(
            budget_mib=resolve_budget(settings.memory_budget),
            budget_auto=settings.memory_budget == "auto",
            load_timeout=settings.load_timeout,
            cache_pool=PromptCachePool(settings.cache_ram * MIB),  # one prompt cache budget for all engines
        ),
        settings=settings,
    )
    routes: list[Route] = []
    for entry in settings.models:
        deployments = []
        for d in entry.deployments:
            provider = _provider(d, shared, entry)
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
    path = Path(settings.model) if settings.model else embedded_model_path()
    provider = _local(path, settings.engine_options, shared, preload=not settings.lazy)
    name = settings.model_name or model_id_for(path)
    budget = shared.models.budget_mib
    if provider.preload and budget is not None and provider.memory_mib > budget:
        raise ModelLoadError(
            f"{path} needs about {provider.memory_mib} MiB with these options, more than the memory budget "
            f"of {budget} MiB (--memory-budget); raise it, lower --parallel or --ctx-size, "
            "or pass --lazy"
        )
    routes.append(
        Route(name=name, deployments=[Deployment(provider, name)], aliases=settings.aliases, is_default=True)
    )
    embedder = embedding_provider(settings, repack=choose_repack(settings.repack, shared.cpu).enabled)
    if embedder is not None:
        loaded = embedder.engine

        shared.models.embedding_usage = lambda: embedder.memory_mib if loaded.is_loaded else 0
        deployment = Deployment(embedder, embedder.model_name)
        routes.append(
            Route(
                name=embedder.model_name,
                deployments=[deployment],
                aliases=EMBEDDING_ALIASES,
                kind="embedding",
            )
        )
    known = {n for r in routes for n in (r.name, *r.aliases)}
    routes.extend(_scan_models_dir(shared, known))
    return Router(routes, discover=lambda: _scan_models_dir(shared, known), memory=shared.models.report)


def build_app(settings: Settings) -> FastAPI:
    """The app a ``Settings`` describes; probes each local GGUF now, so a broken file stops start-up."""
    from .api.app import create_app

    return create_app(settings, build_router(settings))
