"""Build the Ray Serve application: an ingress deployment with the HTTP API, engine deployments behind it.

``build_app`` is the composition root used by ``interference serve --ray``; ``build`` is the
application builder that ``serve run`` / ``serve deploy`` configs name (``interference.ray.app:build``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle

from ..router import Deployment, Route, Router
from ..settings import Settings, load_settings
from .provider import RayProvider
from .replica import EngineReplica, RouteInfo

__all__ = ["Ingress", "Scaling", "build", "build_app"]

# Requests one engine replica takes at once beyond its decoding slots; the rest wait at the ingress.
_QUEUE_PER_SLOT = 2
# Requests waiting at the ingress for an engine replica; beyond that Ray Serve refuses them (a 503).
_MAX_QUEUED = 1000


@dataclass(frozen=True, slots=True)
class Scaling:
    """How many engine replicas: a fixed number, or Ray Serve's autoscaler between two bounds."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    downscale_delay_s: float = 60.0

    def deployment_options(self) -> dict[str, Any]:
        if self.min_replicas is None and self.max_replicas is None:
            return {"num_replicas": self.replicas}
        low = self.min_replicas if self.min_replicas is not None else 1
        high = self.max_replicas if self.max_replicas is not None else max(low, self.replicas)
        config: dict[str, Any] = {
            "min_replicas": low,
            "max_replicas": max(low, high),
            "downscale_delay_s": self.downscale_delay_s,
            "upscale_delay_s": 1.0,
        }
        if self.target_ongoing_requests is not None:
            config["target_ongoing_requests"] = self.target_ongoing_requests
        return {"autoscaling_config": config}


@serve.ingress()
class Ingress:
    """The HTTP API of ``interference serve`` (auth, limits, validation, translation, SSE)."""

    def __init__(self, engine: DeploymentHandle[Any], settings: Settings) -> None:
        self._engine = engine
        self._settings = settings

    async def __serve_build_asgi_app__(self) -> FastAPI:
        from ..api.app import create_app

        infos: list[RouteInfo] = await self._engine.routes.remote()
        provider = RayProvider(self._engine)
        routes = [
            Route(
                name=info.name,
                deployments=[Deployment(provider, model) for model in info.models],
                aliases=info.aliases,
                kind="embedding" if info.kind == "embedding" else "chat",
                is_default=info.is_default,
            )
            for info in infos
        ]
        return create_app(self._settings, Router(routes))


def engine_cpus(settings: Settings) -> int:
    """CPUs Ray reserves for one engine replica: its engine's threads (one when left to the default)."""
    return settings.threads or 1


def build_app(settings: Settings, scaling: Scaling | None = None) -> Application:
    """The application: one ingress replica, engine replicas as ``scaling`` says."""
    scaling = scaling or Scaling()
    cpus = engine_cpus(settings)
    engine_settings = settings.model_copy(update={"threads": cpus})
    engine = serve.deployment(
        name="Engine",
        ray_actor_options={"num_cpus": cpus},
        max_ongoing_requests=settings.parallel * _QUEUE_PER_SLOT,
        max_queued_requests=_MAX_QUEUED,
        health_check_period_s=2.0,
        graceful_shutdown_timeout_s=settings.shutdown_timeout,
        **scaling.deployment_options(),
    )(EngineReplica)
    ingress = serve.deployment(
        name="Ingress",
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=10_000,
    )(Ingress)
    app: Application = ingress.bind(engine.bind(engine_settings), settings)
    return app


def build(args: dict[str, Any]) -> Application:
    """The builder for ``serve run`` / ``serve deploy``: ``args`` are settings, plus the scaling keys."""
    args = dict(args)
    scaling = Scaling(
        replicas=int(args.pop("replicas", 1)),
        min_replicas=args.pop("min_replicas", None),
        max_replicas=args.pop("max_replicas", None),
        downscale_delay_s=float(args.pop("downscale_delay_s", 60.0)),
    )
    config_file = args.pop("config", None)
    return build_app(load_settings(args, config_file=config_file), scaling)
