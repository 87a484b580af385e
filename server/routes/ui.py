"""GET /ui: the credit explorer, a static page that drives the public API (docs/ui.md).

Registered only with ``TC_UI=true``. The page and its scripts are files in ``server/ui/``, served
as they are: no templating, no external assets, so it works on an offline machine. Everything
the page shows comes from the same public calls a user's script would make (``api.js``).

Keys. With ``TC_API_KEYS`` set the page is behind the same keys as ``/v1``. A browser cannot add
an ``Authorization: Bearer`` header to a navigation, so these routes also take HTTP Basic with
the key as the password (any user name): without a key the answer is 401 with a Basic challenge,
and the browser asks for it. The page then asks for the key once more for its own API calls
(kept in ``sessionStorage``), because a script cannot read what the browser's login prompt holds.
"""

from __future__ import annotations

import base64
import binascii
from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response

from server.auth import _bearer, _matches
from server.errors import ServiceError

UI_DIR = Path(__file__).resolve().parent.parent / "ui"
# The page's files; anything else under /ui/ is a 404 (no path is ever joined from the request).
MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "api.js": "text/javascript; charset=utf-8",
    "view.js": "text/javascript; charset=utf-8",
    "export.js": "text/javascript; charset=utf-8",
    "main.js": "text/javascript; charset=utf-8",
}
# The page may load its own files and call this server, nothing else.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _basic_password(request: Request) -> str | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def require_page_key(request: Request) -> None:
    """The API keys of ``/v1`` (``server/auth.py``), as a Bearer token or a Basic password."""
    settings = request.app.state.runtime.settings
    if not settings.api_key_set:
        return
    keys = settings.api_key_set | settings.admin_key_set
    token = _bearer(request) or _basic_password(request)
    if token is None:
        raise ServiceError(
            401,
            "missing API key: send `Authorization: Bearer <key>`, or log in with the key as "
            "the password",
            headers={"WWW-Authenticate": 'Basic realm="tokencredit", charset="UTF-8"'},
        )
    if not _matches(token, keys):
        # 401, not the 403 of /v1: a browser asks for the key again only after a 401.
        raise ServiceError(
            401,
            "API key not accepted",
            headers={"WWW-Authenticate": 'Basic realm="tokencredit", charset="UTF-8"'},
        )


router = APIRouter(dependencies=[Depends(require_page_key)], include_in_schema=False)


def _file(name: str) -> Response:
    body = (UI_DIR / name).read_bytes()
    return Response(body, media_type=MEDIA_TYPES[name], headers=SECURITY_HEADERS)


@router.get("/ui")
async def page() -> Response:
    return _file("index.html")


@router.get("/ui/{name}")
async def asset(name: str) -> Response:
    if name not in MEDIA_TYPES:
        raise ServiceError(404, f"no file {name!r} in the credit explorer", field="path")
    return _file(name)
