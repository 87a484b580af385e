"""Bearer API keys (``TC_API_KEYS``) on every route but health and metrics; admin keys
(``TC_ADMIN_KEYS``) in addition for ``POST /v1/weights``. Keys are compared in constant time and
never logged."""

from __future__ import annotations

import hmac

from fastapi import Request

from server.errors import ServiceError


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def _matches(token: str, keys: frozenset[str]) -> bool:
    return any(hmac.compare_digest(token.encode(), key.encode()) for key in keys)


def require_api_key(request: Request) -> None:
    keys = request.app.state.runtime.settings.api_key_set
    admin = request.app.state.runtime.settings.admin_key_set
    if not keys:
        return
    token = _bearer(request)
    if token is None:
        raise ServiceError(
            401,
            "missing `Authorization: Bearer <key>` header",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not (_matches(token, keys) or _matches(token, admin)):
        raise ServiceError(403, "API key not accepted")


def require_admin_key(request: Request) -> None:
    settings = request.app.state.runtime.settings
    if not settings.admin_key_set:
        if settings.api_key_set:
            raise ServiceError(403, "weight loading is disabled: no TC_ADMIN_KEYS configured")
        return  # open server, open admin (development)
    token = _bearer(request)
    if token is None:
        raise ServiceError(
            401,
            "missing `Authorization: Bearer <admin key>` header",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not _matches(token, settings.admin_key_set):
        raise ServiceError(403, "an admin key is required for POST /v1/weights")
