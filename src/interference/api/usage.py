"""``GET /v1/usage``: the ledger's totals as JSON, for admin keys."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import cast

from fastapi import Request
from starlette.responses import JSONResponse, Response

from ..errors import InvalidRequest, PermissionDenied, ServiceUnavailable
from ..keys import GROUPS, Ledger, summarize
from ..keys.ledger import Group
from .access import is_admin

__all__ = ["parse_since", "usage_report"]


def parse_since(value: str | None) -> str | None:
    """An ISO date or time (``2026-12-01``, ``2026-12-01T10:00``) as the ledger's UTC text, or None."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(
            f"Invalid value for 'since': {value!r} is not an ISO 8601 date.", param="since"
        ) from None
    if when.tzinfo is not None:
        from datetime import UTC

        when = when.astimezone(UTC).replace(tzinfo=None)
    return when.isoformat(timespec="milliseconds")


async def usage_report(request: Request) -> Response:
    if not is_admin(request):
        raise PermissionDenied("Only admin keys may read the usage ledger.")
    group_by = request.query_params.get("group_by", "key")
    if group_by not in GROUPS:
        raise InvalidRequest(
            f"Invalid value for 'group_by': use one of {', '.join(GROUPS)}.", param="group_by"
        )
    since = parse_since(request.query_params.get("since"))
    ledger: Ledger = request.app.state.ledger
    if not ledger.is_running:
        raise ServiceUnavailable("The usage ledger is off: its file could not be opened at start-up.")
    await asyncio.to_thread(ledger.flush)  # the requests that ended before this one are counted
    rows = await asyncio.to_thread(summarize, ledger.path, since=since, group_by=cast(Group, group_by))
    return JSONResponse({"object": "list", "group_by": group_by, "since": since, "data": rows})
