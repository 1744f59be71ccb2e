"""The OpenAPI document: request bodies declared for routes that parse their own bodies.

Handlers validate the raw bytes with ``model_validate_json`` (pydantic's fastest path, and the
error becomes our 400 envelope rather than FastAPI's 422), so FastAPI cannot see their models.
Each such route names its model with ``request_body``; ``install_openapi`` adds those models'
schemas to the document, so ``/openapi.json`` and ``/docs`` show every request body.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

__all__ = ["install_openapi", "request_body"]

_REF = "#/components/schemas/{model}"


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` for a route whose JSON body is ``model``."""
    schema = {"$ref": _REF.format(model=model.__name__)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def install_openapi(app: FastAPI, models: Sequence[type[BaseModel]]) -> None:
    """Build the document once, on first request, with ``models`` among its component schemas."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title, version=app.version, routes=app.routes, description=app.description
            )
            _, defs = models_json_schema([(m, "validation") for m in models], ref_template=_REF)
            schemas = document.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(defs.get("$defs", {}))
            # FastAPI documents a 422 for path parameters; we never send one (bad input is a 400).
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schemas.pop(name, None)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
