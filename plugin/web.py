"""The search page at ``/`` and the image thumbnails it shows (wired in by ``create_app``).

::

    GET /                    the page: plugin/static/index.html (no CDN, no build step)
    GET /ui/<file>           its script and style sheet (plugin/static)
    GET /ui/config           what the page needs before its first search: whether an API key
                             is required, the default k, fusion, lengths and relevance
    GET /v1/thumbnail?id=ID  a JPEG thumbnail of the image indexed under ID

A thumbnail is looked up by id in the image index the service is serving now; the file is the
one recorded for that id when the index was built. Any other id (unknown, or with ``..``, a
backslash or a NUL in it) is a 404 and no file is opened. With an API key configured the
thumbnail route needs it like the search API (the page fetches thumbnails with the header).

Every response carries ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY`` and
``Referrer-Policy: no-referrer``; the page, its files and the thumbnails also carry a
Content-Security-Policy that allows this origin only (no inline script, no other origins,
``frame-ancestors 'none'``). The API docs at ``/docs`` keep FastAPI's own page.
"""

from __future__ import annotations

import io
import logging
import threading
import weakref
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image, ImageOps
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from indexers.catalog_images import IMAGE_SUFFIXES
from rewriters.commands import LENGTH_MAX, LENGTH_MIN

__all__ = ["PAGE_CSP", "STATIC_DIR", "THUMB_PX", "image_file", "install_web", "thumbnail_bytes"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
THUMB_PX = 192  # longest side of a thumbnail, pixels
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
BASE_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                "Referrer-Policy": "no-referrer"}
PAGE_HEADERS = {**BASE_HEADERS, "Content-Security-Policy": PAGE_CSP,
                "Cross-Origin-Opener-Policy": "same-origin",
                "Cross-Origin-Resource-Policy": "same-origin"}

_rows: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # image index -> {id: row}
_rows_lock = threading.Lock()


def _id_rows(index) -> dict[str, int]:
    with _rows_lock:
        rows = _rows.get(index)
        if rows is None:
            rows = _rows[index] = {rid: i for i, rid in enumerate(index.ids)}
        return rows


def _unsafe(image_id: str) -> bool:
    parts = image_id.replace("\\", "/").split("/")
    return ".." in parts or "\\" in image_id or "\x00" in image_id or not image_id.strip()


def image_file(index, image_id: str) -> Path | None:
    """The catalogue file of ``image_id`` in ``index``, or None (nothing is opened for None).

    Only ids the index holds resolve, to the path recorded with them at build time, and only
    when that path is an existing image file (by suffix).
    """
    if index is None or _unsafe(image_id):
        return None
    row = _id_rows(index).get(image_id)
    if row is None:
        return None
    recorded = index.metadata[row].get("path")
    if not recorded:
        return None
    path = Path(recorded)
    if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
        return None
    return path


@lru_cache(maxsize=512)
def _thumbnail_cached(path: str, mtime_ns: int, size: int) -> bytes:
    with Image.open(path) as im:
        im.draft("RGB", (THUMB_PX * 2, THUMB_PX * 2))  # JPEG: decode at a reduced scale
        im = ImageOps.exif_transpose(im)
        im.thumbnail((THUMB_PX, THUMB_PX))
        if im.mode != "RGB":
            rgba = im.convert("RGBA")
            im = Image.new("RGB", rgba.size, (255, 255, 255))
            im.paste(rgba, mask=rgba.getchannel("A"))
        out = io.BytesIO()
        im.save(out, "JPEG", quality=85)
    return out.getvalue()


def thumbnail_bytes(path: Path) -> bytes:
    """A JPEG of ``path`` at most ``THUMB_PX`` on its longest side (cached by mtime and size).

    Raises:
        OSError: the file cannot be read or decoded as an image (PIL's
            DecompressionBombError for one of absurd size).
    """
    st = path.stat()
    return _thumbnail_cached(str(path), st.st_mtime_ns, st.st_size)


def _page_config(request: Request) -> dict[str, Any]:
    pipe = request.app.state.pipeline
    if pipe is None:
        raise StarletteHTTPException(503, "the pipeline is not loaded yet")
    s = pipe.settings
    g, p = s.generation, s.pipeline
    return {
        "auth": s.service.api_key is not None,
        "defaults": {"k": p.k, "fusion": p.fusion, "relevance": g.relevance,
                     "length": {"image": g.image_length, "template": g.template_length}},
        "limits": {"k": [1, 1000], "length": [LENGTH_MIN, LENGTH_MAX], "relevance": [0, 4]},
        "indexes": {"image": pipe.image_index is not None,
                    "template": pipe.template_index is not None},
        "model_version": pipe.model_version,
    }


@lru_cache(maxsize=1)
def _page() -> str:
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


def _web_router(auth: Callable[..., None]) -> APIRouter:
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_page(), headers={"Cache-Control": "no-cache"})

    @router.get("/ui/config", include_in_schema=False)
    def page_config(request: Request) -> JSONResponse:
        return JSONResponse(_page_config(request), headers={"Cache-Control": "no-store"})

    @router.get("/v1/thumbnail", dependencies=[Depends(auth)],
                response_class=Response,
                responses={200: {"content": {"image/jpeg": {}},
                                 "description": "JPEG thumbnail of the indexed image."},
                           404: {"description": "No image with this id in the live index."}})
    def thumbnail(request: Request,
                  id: str = Query(..., min_length=1, max_length=1024,
                                  description="An id of the image index.")) -> Response:
        """A thumbnail of an indexed image, looked up by its id in the live index."""
        pipe = request.app.state.pipeline
        path = image_file(pipe.image_index if pipe is not None else None, id)
        if path is None:
            raise StarletteHTTPException(404, "no indexed image has this id")
        try:
            data = thumbnail_bytes(path)
        except (OSError, ValueError, Image.DecompressionBombError) as e:  # unreadable image
            log.warning("thumbnail of %s (%s) failed: %s", id, path, e)
            raise StarletteHTTPException(404, "the image of this id cannot be read") from e
        return Response(data, media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    return router


def _is_page(path: str) -> bool:
    return path == "/" or path.startswith("/ui/") or path == "/v1/thumbnail"


def install_web(app: FastAPI, auth: Callable[..., None]) -> None:
    """Add the page, its files, the thumbnail route and the security headers to ``app``.

    Args:
        auth: the API-key dependency of the service; the thumbnail route uses it.
    """
    app.include_router(_web_router(auth))  # before the mount: /ui/config is a route
    app.mount("/ui", StaticFiles(directory=STATIC_DIR), name="ui")

    app.add_middleware(SecurityHeaders)


class SecurityHeaders:
    """Pure ASGI middleware: the security headers on every HTTP response (a header the app
    set itself is kept). It only edits the response's start message, where an
    ``@app.middleware`` function (Starlette's ``BaseHTTPMiddleware``) pipes every response
    through a memory stream and a task of its own."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = PAGE_HEADERS if _is_page(scope["path"]) else BASE_HEADERS

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in extra.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
