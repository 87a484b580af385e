"""POST /v1/weights (admin): load a checkpoint from TC_WEIGHTS_ROOT and swap atomically.

POST /v1/weights/transfer/init and /v1/weights/transfer/update (admin): join a trainer's
``torch.distributed`` group and receive pushed weights over it (server/weights_push.py).
"""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, Request

from proto import WeightsRequest, WeightsResponse
from proto.weights_push import (
    WeightsPushRequest,
    WeightsPushResponse,
    WeightsTransferInit,
    WeightsTransferInitResponse,
)
from server.auth import require_admin_key, require_api_key
from server.routes import ERRORS
from server.weights import resolve_weights_path
from server.weights_push import WeightsReceiver

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


def _receiver(request: Request) -> WeightsReceiver:
    state = request.app.state
    if getattr(state, "weights_receiver", None) is None:
        state.weights_receiver = WeightsReceiver()
    return state.weights_receiver


@router.post(
    "/v1/weights/transfer/init", response_model=WeightsTransferInitResponse, responses=ERRORS
)
async def init_transfer(request: Request, body: WeightsTransferInit) -> WeightsTransferInitResponse:
    runtime = request.app.state.runtime
    engine, _ = runtime.require_engine()
    return await _receiver(request).join(engine, body, runtime.gate)


@router.post("/v1/weights/transfer/update", response_model=WeightsPushResponse, responses=ERRORS)
async def push_weights(request: Request, body: WeightsPushRequest) -> WeightsPushResponse:
    runtime = request.app.state.runtime
    engine, _ = runtime.require_engine()
    res = await _receiver(request).push(engine, body, runtime.gate)
    runtime.metrics.weights_version.set(res.weights_version)
    log.info(
        "weights_version %d pushed over group %s: %d bytes in %.2fs",
        res.weights_version,
        body.group_name,
        res.bytes,
        res.load_seconds,
    )
    return res
