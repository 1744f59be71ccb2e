"""HTTP routes: thin handlers that parse, delegate to a serving object and return its response.

Every API route is one row of ``_API_ROUTES``; a route that parses a body and awaits its serving
object (most of them) is one ``_serving`` row. The router is mounted twice, under ``/v1`` and at the
root, because older clients set their base URL without ``/v1``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response

from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    EmbeddingRequest,
    MessagesRequest,
    ModelCard,
    ResponseRequest,
)
from ..protocol.wire import WireModel
from .access import PARSED_BODY_KEY, caller_of
from .cancellation import with_cancellation
from .dispatch import hold_until_sent
from .errors import validation_error
from .models import model_card, model_list
from .openapi import request_body
from .request_log import RequestRecord, record_of
from .state import AppState
from .usage import usage_report

__all__ = ["REQUEST_MODELS", "api_router", "health_router"]

M = TypeVar("M", bound=BaseModel)
# The bodies of the routes that hand one request to a serving object.
Body = TypeVar(
    "Body", ChatCompletionRequest, CompletionRequest, EmbeddingRequest, MessagesRequest, CountTokensRequest
)
Endpoint = Callable[..., Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class _Route:
    name: str  # the OpenAPI operation's name
    method: str
    path: str
    endpoint: Endpoint
    body: type[BaseModel] | None = None  # parsed by the handler; declared to the OpenAPI document


async def _parse(request: Request, model: type[M]) -> M:
    body = await request.body()
    parsed, wire = _validated(body, model, request.scope.get("state", {}).get(PARSED_BODY_KEY))
    if isinstance(parsed, WireModel):
        # An upstream gets this object, with the model replaced, instead of a dump of the models.
        parsed.set_wire_body(wire, raw=body if isinstance(wire, dict) else None)
        caller = caller_of(request.scope)
        if caller is not None and caller.name is not None:
            parsed.set_tenant(caller.name)
    if isinstance(parsed, CountTokensRequest):  # and MessagesRequest: Anthropic upstreams get it as sent
        parsed.set_beta(request.headers.get("anthropic-beta", ""))
    # With the limits' parse of the same body, freed after the response rather than before it.
    hold_until_sent(request.scope, (parsed, request.scope.get("state", {}).pop(PARSED_BODY_KEY, None)))
    return parsed


def _validated(
    body: bytes, model: type[M], parsed: tuple[bytes, Any] | None = None
) -> tuple[M, bytes | dict[str, Any]]:
    """The body as ``model``, and the JSON object it came from (or the bytes, when that is not kept).

    orjson's object validated in Python mode costs half of pydantic's own JSON parsing on an agent's
    100 KB request, and that object is what an upstream is sent again. Anything that this fast way
    refuses goes through ``model_validate_json``, so every error and every acceptance of pydantic's
    JSON parser (lone surrogates, integers past 64 bits, arrays for tuples) stays as it was.
    """
    try:
        # Parsed already when a key's limits needed the body's model (the same bytes, read once).
        data = parsed[1] if parsed is not None and parsed[0] == body else orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    else:
        if isinstance(data, dict):
            try:
                return model.model_validate(data), data
            except ValidationError:
                pass
    try:
        return model.model_validate_json(body), body
    except ValidationError as exc:
        raise validation_error(exc) from None


def _record(request: Request, model: str) -> RequestRecord | None:
    record = record_of(request)
    if record is not None:
        record.model = model
    return record


def _owner(request: Request) -> str:
    caller = caller_of(request.scope)
    return caller.owner if caller is not None else ""


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.interference
    return state


async def _card(work: Awaitable[ModelCard]) -> Response:
    return JSONResponse((await work).model_dump())


def _serving(
    name: str,
    path: str,
    model: type[Body],
    serve: Callable[[AppState, Body, RequestRecord | None], Awaitable[Response]],
) -> _Route:
    """A POST route that parses ``model`` and awaits ``serve``, cancelled if the client leaves."""

    async def endpoint(request: Request) -> Response:
        body = await _parse(request, model)
        record = _record(request, body.model)
        return await with_cancellation(request, serve(_state(request), body, record))

    return _Route(name, "POST", path, endpoint, model)


async def _responses(request: Request) -> Response:
    body = await _parse(request, ResponseRequest)
    state, record, owner = _state(request), _record(request, body.model), _owner(request)
    if await state.router.serves_responses(body.model):  # an upstream that serves it: untranslated
        work = state.native_responses.create(body, await request.body(), record=record, owner=owner)
    else:
        work = state.responses.create(body, record=record, owner=owner)
    return await with_cancellation(request, work)


async def _retrieve_response(request: Request, response_id: str) -> Response:
    return await _state(request).stored_responses.retrieve(response_id, owner=_owner(request))


async def _delete_response(request: Request, response_id: str) -> Response:
    return await _state(request).stored_responses.delete(response_id, owner=_owner(request))


async def _response_input_items(request: Request, response_id: str) -> Response:
    stored = _state(request).stored_responses
    return await stored.input_items(response_id, owner=_owner(request), query=dict(request.query_params))


async def _list_models(request: Request) -> Response:
    router = _state(request).router
    await router.refresh()  # a GGUF added to the models dir since
    return JSONResponse(model_list(request, router.cards(), router.memory()))


async def _load_model(request: Request, model_id: str) -> Response:
    return await with_cancellation(request, _card(_state(request).router.load(model_id)))


async def _unload_model(request: Request, model_id: str) -> Response:
    return await with_cancellation(request, _card(_state(request).router.unload(model_id)))


async def _retrieve_model(request: Request, model_id: str) -> Response:
    router = _state(request).router
    await router.find(model_id)
    return JSONResponse(model_card(request, router.card(model_id)))


# In matching order: a longer path before the one it extends.
_API_ROUTES = (
    _serving("chat_completions", "/chat/completions", ChatCompletionRequest,
             lambda state, body, record: state.chat.create(body, record=record)),
    _serving("completions", "/completions", CompletionRequest,
             lambda state, body, record: state.completions.create(body, record=record)),
    _serving("embeddings", "/embeddings", EmbeddingRequest,
             lambda state, body, record: state.embeddings.create(body, record=record)),
    _Route("responses", "POST", "/responses", _responses, ResponseRequest),
    _Route("retrieve_response", "GET", "/responses/{response_id}", _retrieve_response),
    _Route("delete_response", "DELETE", "/responses/{response_id}", _delete_response),
    _Route("response_input_items", "GET", "/responses/{response_id}/input_items", _response_input_items),
    _serving("messages", "/messages", MessagesRequest,
             lambda state, body, record: state.messages.create(body, record=record)),
    _serving("count_tokens", "/messages/count_tokens", CountTokensRequest,
             lambda state, body, _: state.messages.count_tokens(body)),
    _Route("list_models", "GET", "/models", _list_models),
    _Route("load_model", "POST", "/models/{model_id:path}/load", _load_model),
    _Route("unload_model", "POST", "/models/{model_id:path}/unload", _unload_model),
    _Route("retrieve_model", "GET", "/models/{model_id:path}", _retrieve_model),
    _Route("usage", "GET", "/usage", usage_report),
)  # fmt: skip

# Parsed by hand in the handlers; declared to the OpenAPI document by ``request_body``.
REQUEST_MODELS = tuple(route.body for route in _API_ROUTES if route.body is not None)


def _api_router(routes: tuple[_Route, ...]) -> APIRouter:
    router = APIRouter()
    for route in routes:
        extra = request_body(route.body) if route.body is not None else None
        router.add_api_route(
            route.path, route.endpoint, methods=[route.method], name=route.name, openapi_extra=extra
        )
    return router


api_router = _api_router(_API_ROUTES)
health_router = APIRouter()


@health_router.get("/health")
async def health(request: Request) -> Response:
    """Liveness: 200 while the process can serve; 503 once an engine thread died, or while draining."""
    state = _state(request)
    if state.shutdown.is_draining:
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    healthy = all(p.is_healthy() for p in state.router.providers)
    return JSONResponse({"status": "ok" if healthy else "degraded"}, status_code=200 if healthy else 503)


@health_router.get("/ready")
async def ready(request: Request) -> Response:
    """Readiness: 200 once the models loaded at start-up are loaded, and while nothing has failed."""
    state = _state(request)
    if state.shutdown.is_draining:
        return JSONResponse({"status": "shutting_down"}, status_code=503)
    providers = state.router.providers
    if not all(p.is_healthy() for p in providers):
        return JSONResponse({"status": "degraded"}, status_code=503)
    if not all(p.is_ready() for p in providers):
        return JSONResponse({"status": "loading"}, status_code=503)
    return JSONResponse({"status": "ok"})
