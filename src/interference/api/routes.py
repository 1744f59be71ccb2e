"""HTTP routes: thin handlers that parse, delegate to a serving object and return its response.

The router is mounted twice, under ``/v1`` and at the root, because older clients set their base URL
without ``/v1``.
"""

from __future__ import annotations

from collections.abc import Awaitable
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
from .access import caller_of
from .cancellation import with_cancellation
from .errors import validation_error
from .models import model_card, model_list
from .openapi import request_body
from .request_log import RequestRecord, record_of
from .state import AppState
from .usage import usage_report

__all__ = ["REQUEST_MODELS", "api_router", "health_router"]

M = TypeVar("M", bound=BaseModel)

# Parsed by hand in the handlers; declared to the OpenAPI document by ``request_body``.
REQUEST_MODELS = (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    ResponseRequest,
    MessagesRequest,
    CountTokensRequest,
)

api_router = APIRouter()
health_router = APIRouter()


async def _parse(request: Request, model: type[M]) -> M:
    body = await request.body()
    parsed, wire = _validated(body, model)
    if isinstance(parsed, WireModel):
        # An upstream gets this object, with the model replaced, instead of a dump of the models.
        parsed.set_wire_body(wire)
        caller = caller_of(request.scope)
        if caller is not None and caller.name is not None:
            parsed.set_tenant(caller.name)
    return parsed


def _validated(body: bytes, model: type[M]) -> tuple[M, bytes | dict[str, Any]]:
    """The body as ``model``, and the JSON object it came from (or the bytes, when that is not kept).

    orjson's object validated in Python mode costs half of pydantic's own JSON parsing on an agent's
    100 KB request, and that object is what an upstream is sent again. Anything that this fast way
    refuses goes through ``model_validate_json``, so every error and every acceptance of pydantic's
    JSON parser (lone surrogates, integers past 64 bits, arrays for tuples) stays as it was.
    """
    try:
        data = orjson.loads(body)
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


@api_router.post("/chat/completions", openapi_extra=request_body(ChatCompletionRequest))
async def chat_completions(request: Request) -> Response:
    body = await _parse(request, ChatCompletionRequest)
    return await with_cancellation(
        request, _state(request).chat.create(body, record=_record(request, body.model))
    )


@api_router.post("/completions", openapi_extra=request_body(CompletionRequest))
async def completions(request: Request) -> Response:
    body = await _parse(request, CompletionRequest)
    return await with_cancellation(
        request, _state(request).completions.create(body, record=_record(request, body.model))
    )


@api_router.post("/embeddings", openapi_extra=request_body(EmbeddingRequest))
async def embeddings(request: Request) -> Response:
    body = await _parse(request, EmbeddingRequest)
    return await with_cancellation(
        request, _state(request).embeddings.create(body, record=_record(request, body.model))
    )


@api_router.post("/responses", openapi_extra=request_body(ResponseRequest))
async def responses(request: Request) -> Response:
    body = await _parse(request, ResponseRequest)
    state, record, owner = _state(request), _record(request, body.model), _owner(request)
    if await state.router.serves_responses(body.model):  # an upstream that serves it: untranslated
        work = state.native_responses.create(body, await request.body(), record=record, owner=owner)
    else:
        work = state.responses.create(body, record=record, owner=owner)
    return await with_cancellation(request, work)


@api_router.get("/responses/{response_id}")
async def retrieve_response(request: Request, response_id: str) -> Response:
    return await _state(request).stored_responses.retrieve(response_id, owner=_owner(request))


@api_router.delete("/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    return await _state(request).stored_responses.delete(response_id, owner=_owner(request))


@api_router.get("/responses/{response_id}/input_items")
async def response_input_items(request: Request, response_id: str) -> Response:
    stored = _state(request).stored_responses
    return await stored.input_items(response_id, owner=_owner(request), query=dict(request.query_params))


@api_router.post("/messages", openapi_extra=request_body(MessagesRequest))
async def messages(request: Request) -> Response:
    body = await _parse(request, MessagesRequest)
    body.set_beta(request.headers.get("anthropic-beta", ""))
    return await with_cancellation(
        request, _state(request).messages.create(body, record=_record(request, body.model))
    )


@api_router.post("/messages/count_tokens", openapi_extra=request_body(CountTokensRequest))
async def count_tokens(request: Request) -> Response:
    body = await _parse(request, CountTokensRequest)
    body.set_beta(request.headers.get("anthropic-beta", ""))
    _record(request, body.model)
    return await with_cancellation(request, _state(request).messages.count_tokens(body))


@api_router.get("/models")
async def list_models(request: Request) -> Response:
    router = _state(request).router
    await router.refresh()  # a GGUF added to the models dir since
    return JSONResponse(model_list(request, router.cards(), router.memory()))


@api_router.post("/models/{model_id:path}/load")
async def load_model(request: Request, model_id: str) -> Response:
    return await with_cancellation(request, _card(_state(request).router.load(model_id)))


@api_router.post("/models/{model_id:path}/unload")
async def unload_model(request: Request, model_id: str) -> Response:
    return await with_cancellation(request, _card(_state(request).router.unload(model_id)))


@api_router.get("/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> Response:
    router = _state(request).router
    await router.find(model_id)
    return JSONResponse(model_card(request, router.card(model_id)))


@api_router.get("/usage")
async def usage(request: Request) -> Response:
    return await usage_report(request)


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
