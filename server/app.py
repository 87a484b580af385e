"""The FastAPI app: ``uvicorn server.app:app``.

Routes are thin (``server/routes``); the work lives in service modules (``scoring``,
``advantages``, ``hints``); the model, batcher and weights gate live in ``Runtime``.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from server.errors import install_error_handlers
from server.middleware import RequestIdFilter, ServiceMiddleware
from server.routes import (
    credit,
    hints,
    meta,
    openai_compat,
    reward,
    scoring,
    sglang,
    ui,
    weights,
)
from server.runtime import Runtime
from server.settings import Settings, get_settings

# Routes whose work grows with caller text (parsing, tokenizing, answer matching): they get the
# smaller TC_MAX_TEXT_BODY_BYTES so that none can hold the process for long (docs/reliability.md).
TEXT_ROUTES = ("/v1/tokenize", "/v1/hints", "/get_reward")
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def configure_logging(level: str) -> None:
    root = logging.getLogger()
    if not any(isinstance(f, RequestIdFilter) for h in root.handlers for f in h.filters):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(RequestIdFilter())
        root.addHandler(handler)
    root.setLevel(level.upper())


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    runtime = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime.start()
        yield
        runtime.draining = True
        await runtime.stop()

    # With API keys every route but health and metrics needs one (docs/api.md), so the interactive
    # docs are switched off rather than left open; the schema is also in proto/openapi.json.
    docs = (
        {}
        if not settings.api_key_set
        else {"openapi_url": None, "docs_url": None, "redoc_url": None}
    )
    app = FastAPI(
        title="tokencredit",
        version="1.0.0",
        summary="Teacher scoring and per-token credit assignment for RL on LLMs",
        lifespan=lifespan,
        **docs,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    for module in (meta, scoring, credit, hints, weights, reward, openai_compat, sglang):
        app.include_router(module.router)
    if settings.ui:
        app.include_router(ui.router)
    text_limit = (
        min(settings.max_text_body_bytes, settings.max_body_bytes),
        "TC_MAX_TEXT_BODY_BYTES",
    )
    app.add_middleware(
        ServiceMiddleware,
        metrics=runtime.metrics,
        max_body_bytes=settings.max_body_bytes,
        path_limits=dict.fromkeys(TEXT_ROUTES, text_limit),
        max_json_items=settings.max_json_items,
    )
    return app


app = create_app()
