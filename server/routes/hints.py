"""POST /v1/hints (placeholder until the Meta-Reflection service lands)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from server.auth import require_api_key
from server.errors import ServiceError
from server.routes import ERRORS

router = APIRouter(dependencies=[Depends(require_api_key)])


@router.post("/v1/hints", responses=ERRORS)
async def hints() -> None:
    raise ServiceError(503, "hints are not implemented yet", type="not_implemented")
