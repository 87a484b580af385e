"""vLLM's OpenAI-compatible routes: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions``.

Every failure on these routes, authentication and backpressure included, is answered in vLLM's
error shape (``OpenAIRoute``), so OpenAI-style clients read it as they read vLLM's.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from proto.openai_compat import (
    CompletionRequest,
    CompletionResponse,
    ModelList,
    OpenAIErrorResponse,
)
from server import openai_compat
from server.auth import require_api_key
from server.errors import ServiceError
from server.openai_compat import OpenAIError
from server.routes import JSONBody

OPENAI_ERRORS = {
    code: {"model": OpenAIErrorResponse} for code in (400, 401, 403, 404, 413, 429, 503)
}


class OpenAIRoute(APIRoute):
    """Translates every error raised while answering (validation, auth, queue full, loading) into
    ``{"error": {"message", "type", "param", "code"}}``."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                error = openai_compat.from_validation_error(exc)
            except ServiceError as exc:
                error = OpenAIError.from_service_error(exc)
            except OpenAIError as exc:
                error = exc
            return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

        return route


router = APIRouter(route_class=OpenAIRoute)


@router.get("/health", responses=OPENAI_ERRORS)
async def health(request: Request) -> Response:
    """vLLM's liveness probe: 200 with an empty body once the model serves, 503 before."""
    request.app.state.runtime.require_engine()
    return Response(status_code=200)


@router.get(
    "/v1/models",
    response_model=ModelList,
    responses=OPENAI_ERRORS,
    dependencies=[Depends(require_api_key)],
)
async def models(request: Request) -> JSONBody:
    return JSONBody(openai_compat.models(request.app.state.runtime))


@router.post(
    "/v1/completions",
    response_model=CompletionResponse,
    response_class=JSONBody,
    responses=OPENAI_ERRORS,
    dependencies=[Depends(require_api_key)],
)
async def completions(request: Request, body: CompletionRequest) -> JSONBody:
    return JSONBody(await openai_compat.completions(request.app.state.runtime, body))
