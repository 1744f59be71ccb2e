"""The application factory: ``create_app(settings, router)`` builds the app around a built ``Router``.

The router (and the providers behind it) comes from the composition root, ``assembly.build_router``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..keys import KeyFileError, Ledger, build_limits, default_usage_db
from ..router import Router
from ..settings import ConfigError, Settings
from ..state import ResponseStore, StoreBounds, default_responses_db
from .access import RATE_LIMIT_HEADERS, AccessMiddleware, KeyStore
from .dispatch import install_exact_routes
from .errors import install_error_handlers
from .limits import BodyLimitMiddleware
from .metrics import Metrics, MetricsMiddleware
from .openapi import install_openapi
from .page import install_page
from .request_log import HEADER as REQUEST_ID_HEADER
from .request_log import RequestIdMiddleware
from .routes import REQUEST_MODELS, api_router, health_router
from .state import AppState

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings, router: Router) -> FastAPI:
    """Build the app around ``router``; its providers start and stop with the app's lifespan."""
    keys = KeyStore(settings.keys_file)
    try:
        keys.load()
    except (KeyFileError, OSError) as exc:
        raise ConfigError(str(exc)) from None
    limits = build_limits(settings.limits_backend, fail_open=settings.limits_fail_open)
    ledger = Ledger(settings.usage_db or default_usage_db())
    store = None
    if settings.responses_max_count > 0:
        bounds = StoreBounds(
            max_count=settings.responses_max_count,
            max_bytes=int(settings.responses_max_mib * 2**20),
            max_age=settings.responses_max_age,
        )
        store = ResponseStore(settings.responses_db or default_responses_db(), bounds)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            ledger.start()
        except (OSError, sqlite3.Error) as exc:
            if settings.usage_db:
                raise ConfigError(f"cannot open the usage ledger {ledger.path}: {exc}") from None
            logger.warning("usage ledger off: cannot open %s: %s", ledger.path, exc)
        watcher = asyncio.create_task(keys.watch())
        for provider in router.providers:
            await provider.start()
        try:
            yield
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for provider in router.providers:
                await provider.aclose()
            await limits.aclose()
            ledger.close()
            if store is not None:
                store.close()

    app = FastAPI(
        title="interference",
        version=__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
        # FastAPI's own OpenTelemetry hooks look up the global providers on every request; the
        # server's figures are on /metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    metrics = Metrics(router)
    app.state.interference = AppState.build(router, store)
    app.state.ledger = ledger
    app.add_api_route("/metrics", metrics.render, methods=["GET"], include_in_schema=False)
    install_error_handlers(app)
    app.include_router(health_router)
    app.include_router(api_router, prefix="/v1")
    app.include_router(api_router)
    install_exact_routes(app, [("", health_router), ("/v1", api_router), ("", api_router)])
    install_page(app)
    install_openapi(app, REQUEST_MODELS)
    app.add_middleware(
        AccessMiddleware,
        api_keys=[k.get_secret_value() for k in settings.api_keys],
        keys=keys,
        limits=limits,
        ledger=ledger,
        canonical=lambda name: router.resolve(name).name,
    )
    # Outside the key checks: a body over the limit is refused before anything reads it.
    app.add_middleware(BodyLimitMiddleware, max_bytes=int(settings.max_body_mib * 2**20))
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "x-api-key",
                "anthropic-version",
                REQUEST_ID_HEADER,
            ],
            expose_headers=[REQUEST_ID_HEADER, "Retry-After", *RATE_LIMIT_HEADERS],
            max_age=600,
        )
    # Outermost, so every answer (401s and CORS preflights too) carries the request id.
    app.add_middleware(RequestIdMiddleware, log=settings.access_log, log_format=settings.log_format)
    return app
