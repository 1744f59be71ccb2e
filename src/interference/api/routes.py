"""HTTP routes: thin handlers that parse, delegate to a serving object and return its response.

The router is mounted twice, under ``/v1`` and at the root, because older clients set their base URL
without ``/v1``.
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import JSONResponse, Response

from ..protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    CountTokensRequest,
    EmbeddingRequest,
    MessagesRequest,
    ResponseRequest,
)
from ..protocol.openai import WireModel
from .access import caller_of
from .cancellation import with_cancellation
from .errors import validation_error
from .models import model_card, model_list
from .request_log import RequestRecord, record_of
from .state import AppState
from .usage import usage_report

__all__ = ["api_router", "health_router"]

M = TypeVar("M", bound=BaseModel)

api_router = APIRouter()
health_router = APIRouter()


async def _parse(request: Request, model: type[M]) -> M:
    body = await request.body()
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc) from None
    caller = caller_of(request.scope)
    if caller is not None and caller.name is not None and isinstance(parsed, WireModel):
        parsed.set_tenant(caller.name)
    return parsed


def _record(request: Request, model: str) -> RequestRecord | None:
    record = record_of(request)
    if record is not None:
        record.model = model
    return record


def _state(request: Request) -> AppState:
    state: AppState = request.app.state.interference
    return state


@api_router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    body = await _parse(request, ChatCompletionRequest)
    return await with_cancellation(
        request, _state(request).chat.create(body, record=_record(request, body.model))
    )


@api_router.post("/completions")
async def completions(request: Request) -> Response:
    body = await _parse(request, CompletionRequest)
    return await with_cancellation(
        request, _state(request).completions.create(body, record=_record(request, body.model))
    )


@api_router.post("/embeddings")
async def embeddings(request: Request) -> Response:
    body = await _parse(request, EmbeddingRequest)
    return await with_cancellation(
        request, _state(request).embeddings.create(body, record=_record(request, body.model))
    )


@api_router.post("/responses")
async def responses(request: Request) -> Response:
    body = await _parse(request, ResponseRequest)
    return await with_cancellation(
        request, _state(request).responses.create(body, record=_record(request, body.model))
    )


@api_router.post("/messages")
async def messages(request: Request) -> Response:
    body = await _parse(request, MessagesRequest)
    return await with_cancellation(
        request, _state(request).messages.create(body, record=_record(request, body.model))
    )


@api_router.post("/messages/count_tokens")
async def count_tokens(request: Request) -> Response:
    body = await _parse(request, CountTokensRequest)
    _record(request, body.model)
    return await with_cancellation(request, _state(request).messages.count_tokens(body))


@api_router.get("/models")
async def list_models(request: Request) -> Response:
    return JSONResponse(model_list(request, _state(request).router.cards()))


@api_router.get("/models/{model_id:path}")
async def retrieve_model(request: Request, model_id: str) -> Response:
    return JSONResponse(model_card(request, _state(request).router.card(model_id)))


@api_router.get("/usage")
async def usage(request: Request) -> Response:
    return await usage_report(request)


@health_router.get("/health")
async def health(request: Request) -> Response:
    state = _state(request)
    healthy = all(p.is_healthy() for p in state.router.providers)
    return JSONResponse({"status": "ok" if healthy else "degraded"}, status_code=200 if healthy else 503)
