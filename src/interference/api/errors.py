"""The one place that turns exceptions into error envelopes, and the app's handlers.

OpenAI's envelope (``{"error": {message, type, param, code}}``) everywhere, except on Anthropic's
routes (``/v1/messages…``, and any request that carries ``anthropic-version``), which get Anthropic's
(``{"type": "error", "error": {type, message}}``) with its error type for the status.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import JSONResponse, Response
from starlette.types import Scope

from ..errors import ContextLengthExceeded, InterferenceError, InvalidRequest, NotFound
from ..protocol import ErrorBody, ErrorResponse, ParamError
from .request_log import HEADER as REQUEST_ID_HEADER
from .request_log import record_of

__all__ = [
    "anthropic_error_body",
    "anthropic_error_response",
    "error_body",
    "error_response",
    "install_error_handlers",
    "is_anthropic",
    "response_for",
    "validation_error",
]

logger = logging.getLogger(__name__)

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "body"})


def _is_type_tag(item: str) -> bool:
    """Union branch names pydantic puts in locations ('str', 'list[str]', 'function-after[...]')."""
    return (
        item in _TYPE_TAGS
        or "[" in item
        or item.endswith(("-message", "-item", "-tool"))  # tags of the message, item and tool unions
        or item.startswith(("function-", "constrained-", "json-"))
    )


def _param(loc: tuple[Any, ...]) -> str | None:
    """A pydantic location as OpenAI writes it: ``messages[0].role``."""
    out = ""
    for item in loc:
        if isinstance(item, int):
            out += f"[{item}]"
        elif not _is_type_tag(str(item)):
            out += f".{item}" if out else str(item)
    return out or None


def validation_error(exc: ValidationError | RequestValidationError) -> InvalidRequest:
    """The first problem of a validation failure, as one clear 400."""
    errors = exc.errors()
    err = errors[0]
    if err.get("type") == "json_invalid":
        return InvalidRequest(f"We could not parse the JSON body of your request: {err.get('msg')}")
    ctx = err.get("ctx") or {}
    cause = ctx.get("error")
    loc = tuple(err.get("loc", ()))
    if isinstance(cause, ParamError):
        return InvalidRequest(str(cause), param=cause.param)
    if isinstance(ctx.get("discriminator"), str):
        loc = (*loc, ctx["discriminator"].strip("'"))  # a tagged union's bad tag is the tag field's fault
    param = _param(loc)
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "missing":
        text = f"Missing required parameter: '{param}'."
    elif err.get("type") in ("model_type", "dict_type") and not param:
        text = "The request body must be a JSON object."
    else:
        text = f"Invalid value for '{param}': {msg.removeprefix('Value error, ')}." if param else msg
    return InvalidRequest(_ADDRESS.sub("", text), param=param)


def error_body(exc: InterferenceError) -> ErrorResponse:
    """OpenAI's envelope: the error's own ``type``, ``param`` and ``code``."""
    return ErrorResponse(
        error=ErrorBody(message=_ADDRESS.sub("", exc.message), type=exc.type, param=exc.param, code=exc.code)
    )


# Anthropic's error type for each status (https://docs.anthropic.com/en/api/errors).
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_ANTHROPIC_PATHS = frozenset(
    {"/v1/messages", "/messages", "/v1/messages/count_tokens", "/messages/count_tokens"}
)


def anthropic_error_body(exc: InterferenceError) -> dict[str, Any]:
    """Anthropic's envelope: its error type for the status."""
    kind = _ANTHROPIC_TYPES.get(exc.status) or ("api_error" if exc.status >= 500 else "invalid_request_error")
    message = _ADDRESS.sub("", exc.message)
    if isinstance(exc, ContextLengthExceeded) and exc.tokens is not None and exc.limit is not None:
        message = f"prompt is too long: {exc.tokens} tokens > {exc.limit} maximum"  # what Claude Code acts on
    return {"type": "error", "error": {"type": kind, "message": message}}


@dataclass(frozen=True, slots=True)
class _Envelope:
    """One API's error answer: its body, and whether every 429 says when to retry."""

    body: Callable[[InterferenceError], dict[str, Any]]
    is_429_timed: bool

    def response(self, exc: InterferenceError) -> JSONResponse:
        # Our own queue's estimate, or an upstream's own Retry-After; Anthropic's clients wait 1 s without.
        seconds = exc.retry_after
        if seconds is None and self.is_429_timed and exc.status == 429:
            seconds = 1.0
        headers = {"Retry-After": str(max(1, round(seconds)))} if seconds is not None else {}
        return JSONResponse(self.body(exc), status_code=exc.status, headers=headers)


_OPENAI = _Envelope(lambda exc: error_body(exc).model_dump(), is_429_timed=False)
_ANTHROPIC = _Envelope(anthropic_error_body, is_429_timed=True)


def error_response(exc: InterferenceError) -> JSONResponse:
    return _OPENAI.response(exc)


def anthropic_error_response(exc: InterferenceError) -> JSONResponse:
    return _ANTHROPIC.response(exc)


def is_anthropic(scope: Scope) -> bool:
    """Whether this request gets Anthropic's envelope: its routes, or a client that names its version."""
    path = scope.get("path", "")
    return path in _ANTHROPIC_PATHS or "anthropic-version" in Headers(scope=scope)


def response_for(scope: Scope, exc: InterferenceError) -> JSONResponse:
    """The error in the envelope of the route that was asked."""
    return (_ANTHROPIC if is_anthropic(scope) else _OPENAI).response(exc)


async def _on_interference_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InterferenceError)
    if exc.status >= 500:
        logger.error("%s %s failed: %r", request.method, request.url.path, exc)
    return response_for(request.scope, exc)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError | ValidationError)
    return response_for(request.scope, validation_error(exc))


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        err: InterferenceError = NotFound(f"Invalid URL ({request.method} {request.url.path})")
    elif exc.status_code == 405:
        err = InvalidRequest(f"Method {request.method} is not allowed for {request.url.path}")
        err.status = 405
    else:
        err = InterferenceError(str(exc.detail))
        err.status = exc.status_code
        err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
    return response_for(request.scope, err)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    response = response_for(
        request.scope, InterferenceError("The server had an error while processing your request.")
    )
    # This handler answers outside every middleware, so the request id is added here.
    record = record_of(request)
    if record is not None:
        response.headers[REQUEST_ID_HEADER] = record.id
    return response


async def _on_client_disconnect(request: Request, exc: Exception) -> Response:
    """The client left while its request body was being read: nobody reads the answer, and nothing
    failed on this side, so it is a 400 in the access log rather than a traceback."""
    return response_for(
        request.scope, InvalidRequest("The client closed the connection before sending its request.")
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ClientDisconnect, _on_client_disconnect)
    app.add_exception_handler(InterferenceError, _on_interference_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
