"""One error shape for every failure: ``{"error": {"type", "message", "field"}}`` (docs/api.md).

Validation errors name the JSON path of the offending field (``sequences[0].context_ids``);
a custom pydantic error may carry ``ctx["field"]`` to point below the model that raised it
(see ``proto.advantages.length_mismatch``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from proto import NonFiniteError

log = logging.getLogger(__name__)

HTTP_TYPES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "queue_full",
    431: "headers_too_large",
    503: "unavailable",
}


class ServiceError(Exception):
    """An expected failure with its HTTP status, raised anywhere below the routes."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.type = type or HTTP_TYPES.get(status, "error")
        self.message = message
        self.field = field
        self.headers = headers


def error_body(type: str, message: str, field: str | None = None) -> dict[str, Any]:
    return {"error": {"type": type, "message": message, "field": field}}


def json_path(loc: Sequence[str | int]) -> str | None:
    """``("body", "sequences", 0, "context_ids")`` -> ``"sequences[0].context_ids"``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    path = ""
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif str(part) in ("list", "packed", "function-after"):
            continue  # union branch names pydantic adds to the location
        else:
            path += f".{part}" if path else str(part)
    return path or None


def _validation_response(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
    content_type = request.headers.get("content-type", "")
    if tuple(first.get("loc", ())) == ("body",) and "json" not in content_type.lower():
        # FastAPI reads a body without a JSON content type as a string, and would report
        # "Input should be a valid dictionary": name the real problem instead.
        sent = content_type or "none"
        return JSONResponse(
            status_code=415,
            content=error_body(
                "unsupported_media_type",
                f"send the body as JSON with 'Content-Type: application/json' (got: {sent})",
                "Content-Type",
            ),
        )
    if first.get("type") == "json_invalid":
        return JSONResponse(
            status_code=400,
            content=error_body(
                "invalid_json", f"request body is not valid JSON: {first.get('msg')}"
            ),
        )
    loc = list(first.get("loc", ()))
    ctx = first.get("ctx") or {}
    if isinstance(ctx.get("field"), str):
        loc.append(ctx["field"])
    field = json_path(loc)
    message = str(first.get("msg", "invalid value"))
    if first.get("type") == "extra_forbidden":
        message = f"unknown field {field!r}"
    elif field:
        message = f"{field}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return JSONResponse(status_code=422, content=error_body("validation_error", message, field))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError):
        return _validation_response(request, exc)

    @app.exception_handler(ServiceError)
    async def on_service_error(request: Request, exc: ServiceError):
        return JSONResponse(
            status_code=exc.status,
            content=error_body(exc.type, exc.message, exc.field),
            headers=exc.headers,
        )

    @app.exception_handler(NonFiniteError)
    async def on_non_finite(request: Request, exc: NonFiniteError):
        # proto.encode_array refused a packed NaN/Infinity in a result
        message = f"a result {exc}: the inputs are too extreme to compute it"
        return JSONResponse(status_code=422, content=error_body("non_finite_result", message))

    @app.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        return JSONResponse(
            status_code=exc.status_code,
            content=error_body(HTTP_TYPES.get(exc.status_code, "error"), message),
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception):
        # Normally caught by ServiceMiddleware first (inside the request's log context); this
        # handler serves apps used without it.
        log.exception("unhandled error")
        return JSONResponse(
            status_code=500,
            content=error_body("internal_error", "internal server error; see the server log"),
        )
