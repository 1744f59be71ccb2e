"""``interference serve --ray [ADDRESS]``: start or join Ray, run the application, serve until stopped."""

from __future__ import annotations

import logging
import time

import ray
from ray import serve

from ..settings import Settings
from .app import Scaling, build_app

__all__ = ["APP_NAME", "run"]

logger = logging.getLogger("interference")

APP_NAME = "interference"


def run(settings: Settings, address: str, scaling: Scaling, *, routing: str = "prefix") -> int:
    """``address`` is ``local`` (a Ray instance of our own), ``auto`` or ``ray://host:port``."""
    started = time.perf_counter()
    ray.init(address=None if address == "local" else address, include_dashboard=False)
    try:
        serve.start(http_options={"host": settings.host, "port": settings.port})
        serve.run(build_app(settings, scaling, routing=routing), name=APP_NAME, route_prefix="/")
        logger.info(
            "serving on http://%s:%d through Ray Serve (OpenAI API at /v1 and /); ready in %.2f s",
            settings.host,
            settings.port,
            time.perf_counter() - started,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.delete(APP_NAME)
        ray.shutdown()
    return 0
