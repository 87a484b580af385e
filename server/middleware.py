"""ASGI middleware: request ids, body size limit, per-route metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so a large body is rejected while it streams in, before
it is buffered, and nothing wraps the response body.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
import uuid

from server.errors import error_body
from server.metrics import Metrics

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` so every log line of a request carries its id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class _BodyTooLarge(Exception):
    pass


class ServiceMiddleware:
    def __init__(self, app, metrics: Metrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        request_id = headers.get(b"x-request-id", b"").decode("latin-1")[:128] or uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        limit = self.max_body_bytes

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            status = 413
            await self._send_error(
                send, 413, request_id, f"request body over {limit} bytes (TC_MAX_BODY_BYTES)"
            )
            self._observe(scope, status, started)
            request_id_var.reset(token)
            return

        received = 0
        response_started = False
        rejected = False  # the 413 went out from limited_receive; the app's answer is dropped

        async def limited_receive():
            nonlocal received, rejected, status
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # A body without Content-Length (chunked) is caught here, while it streams.
                    # Answer 413 now: the framework turns any error raised while it reads the
                    # body into its own 400, which send_with_id then drops.
                    if not response_started and not rejected:
                        rejected, status = True, 413
                        await self._send_error(
                            send,
                            413,
                            request_id,
                            f"request body over {limit} bytes (TC_MAX_BODY_BYTES)",
                        )
                    raise _BodyTooLarge
            return message

        async def send_with_id(message):
            nonlocal status, response_started
            if rejected:
                return
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            await send(message)

        self.metrics.in_flight.inc()
        self.metrics.requests_in_flight += 1
        try:
            await self.app(scope, limited_receive, send_with_id)
        except _BodyTooLarge:
            pass  # the 413 was sent by limited_receive (or a response had already started)
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests_in_flight -= 1
            self._observe(scope, status, started)
            request_id_var.reset(token)

    def _observe(self, scope, status: int, started: float) -> None:
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        self.metrics.requests.labels(path, str(status)).inc()
        self.metrics.latency.labels(path, str(status)).observe(time.perf_counter() - started)

    @staticmethod
    async def _send_error(send, status: int, request_id: str, message: str) -> None:
        body = json.dumps(error_body("payload_too_large", message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
