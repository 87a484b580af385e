"""ASGI middleware: request ids, body size limit, per-route metrics, access log, last-resort 500.

Pure ASGI (not ``BaseHTTPMiddleware``) so a large body is rejected while it streams in, before
it is buffered, and nothing wraps the response body.

Request ids: a caller's ``X-Request-Id`` is kept when it is 1-128 characters of
``[A-Za-z0-9._:-]`` (anything else, e.g. a forged log line, gets a fresh id), echoed in the
response header, and carried by every log line of the request: the access line
(``server.access``; run uvicorn with ``--no-access-log``, whose own line cannot carry it) and the
traceback of an unhandled error, whose 500 body names the id to search for.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import re
import time
import uuid

from server.errors import error_body
from server.metrics import Metrics

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
access_log = logging.getLogger("server.access")
log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id_from(headers: dict[bytes, bytes]) -> str:
    """The caller's ``X-Request-Id`` when it is safe to log as is, else a fresh one."""
    given = headers.get(b"x-request-id", b"").decode("latin-1")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` so every log line of a request carries its id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


# Header limits (431). uvicorn's --h11-max-incomplete-event-size bounds what it buffers while
# headers arrive; a complete header block that came in one read is checked here.
MAX_HEADERS = 100
MAX_HEADER_BYTES = 32 * 1024


class _BodyTooLarge(Exception):
    pass


# Parsing and validating a JSON body runs on the event loop, one C call holding the GIL, so its
# cost is what a request can block /healthz for. Measured here: about 0.2 us per array value and
# 30 times that per object (a model instance to build), so a body's cost in "items" is its commas
# plus OBJECT_WEIGHT per "{", counted as it streams in. Packed (base64) arrays contain neither.
OBJECT_WEIGHT = 32


def json_items(chunk: bytes) -> int:
    """Upper bound of a JSON chunk's parse cost in array values (see OBJECT_WEIGHT)."""
    return chunk.count(b",") + OBJECT_WEIGHT * chunk.count(b"{")


class ServiceMiddleware:
    def __init__(
        self,
        app,
        metrics: Metrics,
        max_body_bytes: int,
        path_limits: dict[str, tuple[int, str]] | None = None,
        max_json_items: int | None = None,
    ):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        # path -> (smaller body limit, the setting that sets it), e.g. the text routes; their
        # small byte limit bounds their parse cost, so the item count applies to the others
        self.path_limits = path_limits or {}
        self.max_json_items = max_json_items

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        request_id = request_id_from(headers)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        limit, setting = self.path_limits.get(
            scope.get("path", ""), (self.max_body_bytes, "TC_MAX_BODY_BYTES")
        )
        item_limit = None if scope.get("path", "") in self.path_limits else self.max_json_items

        raw_headers = scope.get("headers") or []
        if len(raw_headers) > MAX_HEADERS or sum(len(k) + len(v) for k, v in raw_headers) > (
            MAX_HEADER_BYTES
        ):
            status = 431
            await self._send_error(
                send,
                431,
                request_id,
                f"at most {MAX_HEADERS} headers of {MAX_HEADER_BYTES} bytes together",
                type="headers_too_large",
            )
            self._observe(scope, status, started)
            request_id_var.reset(token)
            return

        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            status = 413
            await self._send_error(
                send, 413, request_id, f"request body over {limit} bytes ({setting})"
            )
            self._observe(scope, status, started, received=0)
            request_id_var.reset(token)
            return

        received = items = 0
        response_started = False
        rejected = False  # the 413 went out from limited_receive; the app's answer is dropped

        async def limited_receive():
            nonlocal received, items, rejected, status
            message = await receive()
            if message["type"] == "http.request":
                chunk = message.get("body", b"")
                received += len(chunk)
                too_large = None
                if received > limit:
                    # A body without Content-Length (chunked) is caught here, while it streams.
                    too_large = f"request body over {limit} bytes ({setting})"
                elif item_limit is not None:
                    items += json_items(chunk)
                    if items > item_limit:
                        too_large = (
                            f"request body over {item_limit} JSON items (TC_MAX_JSON_ITEMS: "
                            f"array values, {OBJECT_WEIGHT} per object); send numeric arrays "
                            "packed (base64) or split the request"
                        )
                if too_large:
                    # Answer 413 now: the framework turns any error raised while it reads the
                    # body into its own 400, which send_with_id then drops.
                    if not response_started and not rejected:
                        rejected, status = True, 413
                        await self._send_error(send, 413, request_id, too_large)
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
        except asyncio.CancelledError:
            # uvicorn cancels what outlives --timeout-graceful-shutdown (TC_DRAIN_SECONDS) and
            # would answer a text/plain 500: answer the JSON 503 of API.md instead.
            if response_started or rejected:
                raise
            status = 503
            await self._send_error(
                send,
                503,
                request_id,
                "server shut down before this request finished (TC_DRAIN_SECONDS); retry "
                "on another replica",
                type="shutting_down",
                headers=[(b"retry-after", b"1")],
            )
        except Exception:
            # Caught here, inside the request's context, so the traceback carries the request id
            # (the framework's own handler runs outside it and logs the error a second time).
            status = 500
            log.exception("unhandled error")
            if not response_started:
                await self._send_error(
                    send,
                    500,
                    request_id,
                    f"internal server error; search the server log for request id {request_id}",
                    type="internal_error",
                )
        finally:
            self.metrics.in_flight.dec()
            self.metrics.requests_in_flight -= 1
            self._observe(scope, status, started, received)
            request_id_var.reset(token)

    def _observe(self, scope, status: int, started: float, received: int) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        path = getattr(route, "path", None) or "unmatched"
        self.metrics.requests.labels(path, str(status)).inc()
        self.metrics.latency.labels(path, str(status)).observe(elapsed)
        client = scope.get("client") or ("-", 0)
        access_log.info(
            '%s:%s "%s %s" %d %dB %.1fms',
            client[0],
            client[1],
            scope.get("method", "-"),
            scope.get("path", "-").encode("unicode_escape").decode("ascii"),  # no forged lines
            status,
            received,
            elapsed * 1000,
        )

    @staticmethod
    async def _send_error(
        send,
        status: int,
        request_id: str,
        message: str,
        type: str = "payload_too_large",
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        body = json.dumps(error_body(type, message)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-request-id", request_id.encode("latin-1")),
                    (b"connection", b"close"),
                    *(headers or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
