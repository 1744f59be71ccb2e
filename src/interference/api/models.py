"""GET /v1/models: OpenAI's list shape, or Anthropic's when the client sends ``anthropic-version``."""

from __future__ import annotations

import datetime
from typing import Any

from starlette.requests import Request

from ..protocol import MemoryReport, ModelCard, ModelList

__all__ = ["model_card", "model_list"]


def _is_anthropic(request: Request) -> bool:
    return "anthropic-version" in request.headers


def _anthropic_card(card: ModelCard) -> dict[str, Any]:
    created = datetime.datetime.fromtimestamp(card.created, tz=datetime.UTC)
    return {
        "type": "model",
        "id": card.id,
        "display_name": card.id,
        "created_at": created.isoformat().replace("+00:00", "Z"),
    }


def model_list(
    request: Request, cards: list[ModelCard], memory: MemoryReport | None = None
) -> dict[str, Any]:
    if not _is_anthropic(request):
        listing = ModelList(data=cards, memory=memory).model_dump()
        if memory is None:
            del listing["memory"]
        return listing
    # Every model fits on one page: has_more is always false, and the paging parameters are ignored.
    data = [_anthropic_card(c) for c in cards]
    return {
        "data": data,
        "has_more": False,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
    }


def model_card(request: Request, card: ModelCard) -> dict[str, Any]:
    return _anthropic_card(card) if _is_anthropic(request) else card.model_dump()
