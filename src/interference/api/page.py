"""The chat page: ``GET /`` and its few static files, which ship inside the package.

The files are read once, when the app is built, and served from memory. A strict
Content-Security-Policy forbids inline scripts, so even a bug that let model output into the DOM as
HTML could not run it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from fastapi import APIRouter, FastAPI
from starlette.responses import Response

from ..errors import NotFound

__all__ = ["install_page"]

_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True, slots=True)
class _Asset:
    body: bytes
    media_type: str

    def response(self) -> Response:
        return Response(self.body, media_type=self.media_type, headers=_HEADERS)


def install_page(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files at ``/static/NAME`` (exact names only)."""
    folder = resources.files(__package__).joinpath("static")
    assets = {name: _Asset(folder.joinpath(name).read_bytes(), kind) for name, kind in _FILES.items()}
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def page() -> Response:
        return assets["index.html"].response()

    @router.get("/static/{name}")
    async def static(name: str) -> Response:
        asset = assets.get(name)
        if asset is None or name == "index.html":
            raise NotFound(f"Invalid URL (GET /static/{name})")
        return asset.response()

    app.include_router(router)
