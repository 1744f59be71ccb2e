"""Exact-path dispatch for the API's fixed routes, in the router's place.

FastAPI's router tries its routes one by one, and an included router's routes again: about 10-20 us
a route on a small CPU, so the later routes (``/v1/responses``, and every route at the root) paid up
to 0.4 ms a request before their endpoint ran. Routes without path parameters are looked up by
method and path instead. Everything else (path parameters, the page, 404s and 405s) goes to the
router as before.

A looked-up route whose endpoint takes only the request is called directly, as Starlette would call
it: FastAPI's per-request machinery around it (dependency solving, two exit stacks, the response
checks) has nothing to do for such an endpoint and cost about 40 us a request. Exceptions still reach
the app's handlers through the exception middleware around the router.

What such an endpoint parsed is freed after its response is written, on the event loop's next turn
(``hold_until_sent``): an agent's 100 KB request is a tree of thousands of objects, and freeing it
took about 50 us between the handler's return and the response's first byte.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIRouter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["hold_until_sent", "install_exact_routes"]

_HELD = "interference_held_until_sent"


def hold_until_sent(scope: Scope, value: Any) -> None:
    """Keep ``value`` alive until the response is written, then free it off the response's path."""
    scope[_HELD] = value


def _drop(_: Any) -> None:
    """Nothing: the value is freed when the loop lets go of this call's arguments."""


class _ExactRoutes:
    def __init__(
        self, app: ASGIApp, router: APIRouter, routes: dict[tuple[str, str], tuple[APIRoute, bool]]
    ) -> None:
        self.app = app
        self.router = router
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = (
            self.routes.get((scope.get("method", ""), scope.get("path", "")))
            if scope["type"] == "http"
            else None
        )
        if found is None:
            await self.app(scope, receive, send)
            return
        route, direct = found
        scope.setdefault("router", self.router)
        scope.update(endpoint=route.endpoint, route=route, path_params={})
        try:
            if direct:
                endpoint: Callable[[Request], Awaitable[Response]] = route.endpoint
                response = await endpoint(Request(scope, receive, send))
                await response(scope, receive, send)
            else:
                await route.handle(scope, receive, send)
        finally:
            held = scope.pop(_HELD, None)
            if held is not None:
                asyncio.get_running_loop().call_soon(_drop, held)


def _takes_only_request(endpoint: Callable[..., object]) -> bool:
    """Whether ``endpoint`` is ``async def f(request: Request) -> Response``: nothing to inject."""
    if not inspect.iscoroutinefunction(endpoint):
        return False
    params = list(inspect.signature(endpoint).parameters.values())
    return len(params) == 1 and params[0].annotation in (Request, "Request")


def install_exact_routes(app: FastAPI, routers: list[tuple[str, APIRouter]]) -> None:
    """Look up the parameterless routes of ``routers`` (each under its prefix) by method and path."""
    table: dict[tuple[str, str], tuple[APIRoute, bool]] = {}
    for prefix, router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and "{" not in route.path:
                for method in route.methods or ():
                    table.setdefault(
                        (method, prefix + route.path), (route, _takes_only_request(route.endpoint))
                    )
    app.router.middleware_stack = _ExactRoutes(app.router.middleware_stack, app.router, table)
