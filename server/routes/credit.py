"""POST /v1/advantages."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from proto import AdvantagesRequest, AdvantagesResponse
from server import advantages
from server.auth import require_api_key
from server.routes import ERRORS, JSONBody

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post(
    "/v1/advantages", response_model=AdvantagesResponse, response_class=JSONBody, responses=ERRORS
)
async def compute_advantages(request: Request, body: AdvantagesRequest) -> JSONBody:
    timings: dict[str, float] = {}
    result = await advantages.advantages(request.app.state.runtime, body, timings)
    # Server-Timing lets a caller split its round trip into scoring, math and transport.
    server_timing = ", ".join(f"{k};dur={v * 1000:.3f}" for k, v in timings.items())
    return JSONBody(result, headers={"Server-Timing": server_timing})
