"""POST /v1/weights (admin): load a checkpoint from TC_WEIGHTS_ROOT and swap atomically."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request

from proto import WeightsRequest, WeightsResponse
from server.auth import require_admin_key, require_api_key
from server.routes import ERRORS
from server.weights import resolve_weights_path

log = logging.getLogger(__name__)
router = APIRouter(dependencies=[Depends(require_api_key), Depends(require_admin_key)])


@router.post("/v1/weights", response_model=WeightsResponse, responses=ERRORS)
async def load_weights(request: Request, body: WeightsRequest) -> WeightsResponse:
    runtime = request.app.state.runtime
    engine, _ = runtime.require_engine()
    folder = resolve_weights_path(runtime.settings.weights_root, body.path)
    version, seconds = await runtime.gate.swap(engine, str(folder), body.version)
    runtime.metrics.weights_version.set(version)
    log.info("weights_version %d loaded from %s in %.2fs", version, body.path, seconds)
    return WeightsResponse(weights_version=version, load_seconds=round(seconds, 3))
