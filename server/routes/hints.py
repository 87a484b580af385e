"""POST /v1/hints: AMR-SD Meta-Reflection (service in ``server/hints.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from proto import HintsRequest, HintsResponse
from server import hints
from server.auth import require_api_key
from server.routes import ERRORS, JSONBody

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/hints", response_model=HintsResponse, response_class=JSONBody, responses=ERRORS)
async def write_hints(request: Request, body: HintsRequest) -> JSONBody:
    return JSONBody(await hints.hints(request.app.state.runtime, body))
