"""SGLang's ``POST /generate`` (errors in the OpenAI-compatible shape, see ``OpenAIRoute``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from proto.sglang import GenerateRequest
from server import sglang_generate
from server.auth import require_api_key
from server.routes import JSONBody
from server.routes.openai_compat import OPENAI_ERRORS, OpenAIRoute

router = APIRouter(route_class=OpenAIRoute)


@router.post(
    "/generate",
    response_class=JSONBody,
    responses=OPENAI_ERRORS,
    dependencies=[Depends(require_api_key)],
)
async def generate(request: Request, body: GenerateRequest) -> JSONBody:
    return JSONBody(await sglang_generate.generate(request.app.state.runtime, body))
