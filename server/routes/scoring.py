"""POST /v1/logprobs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from proto import LogprobsRequest, LogprobsResponse
from server import scoring
from server.auth import require_api_key
from server.routes import ERRORS, JSONBody

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post(
    "/v1/logprobs", response_model=LogprobsResponse, response_class=JSONBody, responses=ERRORS
)
async def logprobs(request: Request, body: LogprobsRequest) -> JSONBody:
    return JSONBody(await scoring.logprobs(request.app.state.runtime, body))
