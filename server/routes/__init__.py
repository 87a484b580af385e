"""Thin HTTP routers: parse, call a service function, return. Error shapes live in errors.py."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Response

from proto import ErrorResponse
from proto.base import find_non_finite
from server.errors import ServiceError

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 403, 409, 413, 422, 429, 503)
}


class JSONBody(Response):
    """JSON response from plain dicts/lists, skipping a second pydantic validation pass
    (per-token arrays are large; the models already define the schema in ``responses=``).

    Strict JSON only: a NaN or Infinity in a result is a 422 naming where it is
    (``non_finite_result``), never a body that strict parsers reject."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()
        except ValueError:
            found = find_non_finite(content)
            if found is None:
                raise
            raise ServiceError(
                422,
                f"the result {found[0]} {found[1]}: the inputs are too extreme to compute it "
                "(rewards, log-probs or temperature)",
                type="non_finite_result",
            ) from None
