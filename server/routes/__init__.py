"""Thin HTTP routers: parse, call a service function, return. Error shapes live in errors.py."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Response

from proto import ErrorResponse

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 409, 413, 422, 429, 503)
}


class JSONBody(Response):
    """JSON response from plain dicts/lists, skipping a second pydantic validation pass
    (per-token arrays are large; the models already define the schema in ``responses=``)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()
