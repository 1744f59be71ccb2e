"""The one place that turns exceptions into OpenAI's error envelope, and the app's handlers."""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from ..errors import InterferenceError, InvalidRequest, NotFound, Overloaded
from ..protocol import ErrorBody, ErrorResponse, ParamError

__all__ = ["error_body", "error_response", "install_error_handlers", "validation_error"]

logger = logging.getLogger(__name__)

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict", "body"})


def _is_type_tag(item: str) -> bool:
    """Union branch names pydantic puts in locations ('str', 'list[str]', 'function-after[...]')."""
    return (
        item in _TYPE_TAGS
        or "[" in item
        or item.endswith("-message")  # the chat message union's role tags
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
    return ErrorResponse(
        error=ErrorBody(message=_ADDRESS.sub("", exc.message), type=exc.type, param=exc.param, code=exc.code)
    )


def error_response(exc: InterferenceError) -> JSONResponse:
    headers = {}
    if isinstance(exc, Overloaded):
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    return JSONResponse(error_body(exc).model_dump(), status_code=exc.status, headers=headers)


async def _on_interference_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, InterferenceError)
    if exc.status >= 500:
        logger.error("%s %s failed: %r", request.method, request.url.path, exc)
    return error_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError | ValidationError)
    return error_response(validation_error(exc))


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
    return error_response(err)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(InterferenceError("The server had an error while processing your request."))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(InterferenceError, _on_interference_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(ValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
