"""GET and DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items: stored responses, owner only.

A response made with another key, an expired one, one made with ``store: false`` and an unknown id all
get the same 404: nobody learns that another key's response exists.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from ..errors import InvalidRequest, NotFound
from ..state import ResponseStore, Stored

__all__ = ["StoredResponses"]

MAX_PAGE = 100


class StoredResponses:
    def __init__(self, store: ResponseStore | None) -> None:
        self._store = store

    async def _find(self, response_id: str, owner: str) -> Stored:
        found = None if self._store is None else await self._store.get(response_id, owner=owner)
        if found is None:
            raise NotFound(f"Response with id '{response_id}' not found.")
        return found

    async def retrieve(self, response_id: str, *, owner: str) -> Response:
        return JSONResponse((await self._find(response_id, owner)).response)

    async def delete(self, response_id: str, *, owner: str) -> Response:
        if self._store is None or not await self._store.delete(response_id, owner=owner):
            raise NotFound(f"Response with id '{response_id}' not found.")
        return JSONResponse({"id": response_id, "object": "response", "deleted": True})

    async def input_items(self, response_id: str, *, owner: str, query: dict[str, str]) -> Response:
        limit = _limit(query.get("limit"))
        order = query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("order must be 'asc' or 'desc'", param="order")
        stored = await self._find(response_id, owner)
        items = [_with_id(item, i) for i, item in enumerate(stored.items)]
        if order == "desc":
            items.reverse()
        after = query.get("after")
        if after:
            at = next((i for i, item in enumerate(items) if item["id"] == after), None)
            if at is None:
                raise InvalidRequest(f"No input item with id '{after}'.", param="after")
            items = items[at + 1 :]
        page = items[:limit]
        return JSONResponse(
            {
                "object": "list",
                "data": page,
                "first_id": page[0]["id"] if page else None,
                "last_id": page[-1]["id"] if page else None,
                "has_more": len(items) > limit,
            }
        )


def _limit(raw: str | None) -> int:
    if raw is None:
        return 20
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest("limit must be an integer between 1 and 100", param="limit") from None
    if not 1 <= value <= MAX_PAGE:
        raise InvalidRequest("limit must be an integer between 1 and 100", param="limit")
    return value


def _with_id(item: dict[str, Any], position: int) -> dict[str, Any]:
    """Input items as OpenAI lists them: each with an id (items sent without one get a stable one)."""
    if item.get("id"):
        return item
    kind = item.get("type", "message")
    prefix = {"message": "msg", "function_call_output": "fco", "custom_tool_call_output": "ctco"}.get(
        kind, "item"
    )
    return {"id": f"{prefix}_{position:06d}", **item}
