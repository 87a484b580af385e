"""Health, readiness, metrics, model metadata and tokenization."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from proto import (
    HealthResponse,
    ModelInfo,
    ReadyResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from server.auth import require_api_key
from server.credit import METHODS
from server.engine_guard import EngineUnavailable
from server.errors import ServiceError
from server.routes import ERRORS

router = APIRouter()


@router.get("/healthz", response_model=HealthResponse, responses=ERRORS)
async def healthz(request: Request) -> HealthResponse:
    # Liveness: the process answers, and its engine has not failed (a dead engine core or a hung
    # forward never recovers in-process, so the orchestrator should restart the pod).
    failure = request.app.state.runtime.engine_failure
    if failure is not None:
        raise EngineUnavailable(failure)
    return HealthResponse()


@router.get("/readyz", response_model=ReadyResponse, responses=ERRORS)
async def readyz(request: Request) -> ReadyResponse:
    runtime = request.app.state.runtime
    runtime.require_engine()
    return ReadyResponse(weights_version=runtime.gate.version)


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    runtime = request.app.state.runtime
    runtime.metrics.queue_depth.set(runtime.batcher.depth if runtime.batcher else 0)
    return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/model", response_model=ModelInfo, responses=ERRORS, dependencies=[Depends(require_api_key)]
)
async def model_info(request: Request) -> ModelInfo:
    runtime = request.app.state.runtime
    engine, _ = runtime.require_engine()
    info = engine.info
    return ModelInfo(
        model=info.model,
        backend=info.backend,
        dtype=info.dtype,
        device=info.device,
        vocab_size=info.vocab_size,
        max_model_len=info.max_model_len,
        tokenizer_sha256=info.tokenizer_sha256,
        weights_version=runtime.gate.version,
        max_top_k=info.max_top_k,
        methods=list(METHODS),
    )


@router.post(
    "/v1/tokenize",
    response_model=TokenizeResponse,
    responses=ERRORS,
    dependencies=[Depends(require_api_key)],
)
async def tokenize(request: Request, body: TokenizeRequest) -> TokenizeResponse:
    engine, _ = request.app.state.runtime.require_engine()
    tokenizer = engine.tokenizer
    # Off the event loop: a few MB of text take seconds to tokenize.
    if body.text is not None:
        ids = await asyncio.to_thread(tokenizer.encode, body.text, add_special_tokens=False)
        return TokenizeResponse(ids=ids)
    messages = [m.model_dump() for m in body.messages]
    try:
        ids = await asyncio.to_thread(
            tokenizer.apply_chat_template,
            messages,
            tokenize=True,
            add_generation_prompt=body.add_generation_prompt,
            return_dict=False,
        )
    except Exception as exc:  # a template can reject roles or orderings
        raise ServiceError(
            422, f"chat template rejected the messages: {exc}", field="messages"
        ) from exc
    return TokenizeResponse(ids=list(ids))
