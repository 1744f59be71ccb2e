"""Build the Ray Serve application: an ingress deployment with the HTTP API, engine deployments behind it,
and one usage-ledger replica that every ingress replica writes through.

``build_app`` is the composition root used by ``interference serve --ray``; ``build`` is the
application builder that ``serve run`` / ``serve deploy`` configs name (``interference.ray.app:build``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application
from ray.serve.config import RequestRouterConfig
from ray.serve.handle import DeploymentHandle

from ..router import Deployment, Route, Router
from ..settings import Settings, load_settings
from .ledger import UsageLedger, forward_to
from .provider import RayProvider
from .replica import EngineReplica, RouteInfo
from .routing import ROUTERS

__all__ = ["Ingress", "Scaling", "build", "build_app"]

# Requests waiting at the ingress for an engine replica; beyond that Ray Serve refuses them (a 503).
_MAX_QUEUED = 1000


@dataclass(frozen=True, slots=True)
class Scaling:
    """How many replicas: engines a fixed number or Ray Serve's autoscaler between two bounds; ingresses."""

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    target_ongoing_requests: float | None = None
    downscale_delay_s: float = 60.0
    upscale_delay_s: float = 1.0
    # Seconds of ongoing-request figures the autoscaler averages over (Ray Serve's default: 30).
    look_back_period_s: float | None = None
    ingress_replicas: int = 1
    # Requests one engine replica takes at once, per decoding slot; the rest wait at the ingress. With 1,
    # whichever replica frees a slot first takes the next request (better balance when every slot is
    # busy), but a request that finds no free slot within the provider's ASSIGN_TIMEOUT gets a 503.
    requests_per_slot: int = 2

    def deployment_options(self) -> dict[str, Any]:
        if self.min_replicas is None and self.max_replicas is None:
            return {"num_replicas": self.replicas}
        low = self.min_replicas if self.min_replicas is not None else 1
        high = self.max_replicas if self.max_replicas is not None else max(low, self.replicas)
        config: dict[str, Any] = {
            "min_replicas": low,
            "max_replicas": max(low, high),
            "downscale_delay_s": self.downscale_delay_s,
            "upscale_delay_s": self.upscale_delay_s,
        }
        if self.target_ongoing_requests is not None:
            config["target_ongoing_requests"] = self.target_ongoing_requests
        if self.look_back_period_s is not None:
            config["look_back_period_s"] = self.look_back_period_s
        return {"autoscaling_config": config}


@serve.ingress()
class Ingress:
    """The HTTP API of ``interference serve`` (auth, limits, validation, translation, SSE)."""

    def __init__(
        self, engine: DeploymentHandle[Any], ledger: DeploymentHandle[Any], settings: Settings
    ) -> None:
        self._engine = engine
        self._ledger = ledger
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
        app = create_app(self._settings, Router(routes))
        app.state.ledger.send_to(forward_to(self._ledger))  # before the lifespan starts it
        return app


def engine_cpus(settings: Settings) -> int:
    """CPUs Ray reserves for one engine replica: its engine's threads (one when left to the default)."""
    return settings.threads or 1


def build_app(
    settings: Settings,
    scaling: Scaling | None = None,
    *,
    routing: str = "prefix",
    engine_num_cpus: float | None = None,
    engine_class: type[Any] = EngineReplica,
) -> Application:
    """The application: ingress and engine replicas as ``scaling`` says, routed by ``routing``.

    ``routing`` is a name in ``ROUTERS``: ``prefix`` (turns of a conversation go to the replica that
    holds its prefix) or ``pow2`` (Ray Serve's default). ``engine_num_cpus`` overrides the CPUs Ray
    reserves per engine replica (``engine_cpus``); ``engine_class`` replaces ``EngineReplica`` with a
    class of the same methods (a stand-in engine, for measuring what Ray Serve adds)."""
    scaling = scaling or Scaling()
    if routing not in ROUTERS:
        raise ValueError(f"routing must be one of {sorted(ROUTERS)}, not {routing!r}")
    cpus = engine_cpus(settings)
    capacity = settings.parallel * scaling.requests_per_slot
    engine_settings = settings.model_copy(update={"threads": cpus})
    engine = serve.deployment(
        name="Engine",
        ray_actor_options={"num_cpus": cpus if engine_num_cpus is None else engine_num_cpus},
        max_ongoing_requests=capacity,
        max_queued_requests=_MAX_QUEUED,
        health_check_period_s=2.0,
        graceful_shutdown_timeout_s=settings.shutdown_timeout,
        request_router_config=RequestRouterConfig(
            request_router_class=ROUTERS[routing],  # type: ignore[arg-type]  # a str or a class
            # A conversation's replica is busy when it takes no more requests: a turn that waits there
            # for a slot reuses its prefix, one sent elsewhere computes it again.
            request_router_kwargs=(
                {"busy_at": capacity, "slots": settings.parallel} if routing == "prefix" else {}
            ),
        ),
        **scaling.deployment_options(),
    )(engine_class)
    ledger = serve.deployment(
        name="UsageLedger",
        num_replicas=1,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=100,
    )(UsageLedger)
    ingress = serve.deployment(
        name="Ingress",
        num_replicas=scaling.ingress_replicas,
        ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=10_000,
    )(Ingress)
    usage_db = str(settings.usage_db) if settings.usage_db else None
    app: Application = ingress.bind(engine.bind(engine_settings), ledger.bind(usage_db), settings)
    return app


def build(args: dict[str, Any]) -> Application:
    """The builder for ``serve run`` / ``serve deploy``: ``args`` are settings, plus the scaling keys
    and ``routing``."""
    args = dict(args)
    scaling = Scaling(
        replicas=int(args.pop("replicas", 1)),
        min_replicas=args.pop("min_replicas", None),
        max_replicas=args.pop("max_replicas", None),
        downscale_delay_s=float(args.pop("downscale_delay_s", 60.0)),
        ingress_replicas=int(args.pop("ingress_replicas", 1)),
        requests_per_slot=int(args.pop("requests_per_slot", 2)),
    )
    routing = str(args.pop("routing", "prefix"))
    config_file = args.pop("config", None)
    return build_app(load_settings(args, config_file=config_file), scaling, routing=routing)
