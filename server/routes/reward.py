"""POST /get_reward (placeholder until OpenRLHF's remote reward protocol lands)."""

from __future__ import annotations

from fastapi import APIRouter

from server.errors import ServiceError
from server.routes import ERRORS

router = APIRouter()


@router.post("/get_reward", responses=ERRORS)
async def get_reward() -> None:
    raise ServiceError(503, "remote reward is not implemented yet", type="not_implemented")
