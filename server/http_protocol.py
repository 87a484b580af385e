"""uvicorn's h11 protocol with a deadline on each request's head (``--http`` takes this class).

uvicorn bounds the idle time between requests (``--timeout-keep-alive``) but not the time a
client takes to send a request line and headers: a client that connects and then trickles its
headers (slowloris), or sends nothing at all, holds its connection forever and counts against
``--limit-concurrency``. Here a connection gets ``TC_HEADER_TIMEOUT`` seconds from its opening,
and again after each response, to deliver a complete head; past that it is answered 408 in JSON
and closed. Bodies are not timed: a request's body arrives while the app runs it, under its own
limits (docs/reliability.md).

Above ``--limit-concurrency`` uvicorn answers 503 itself, before the app runs; that answer is
given here in the service's JSON error shape with a ``Retry-After``, like every other refusal.
"""

from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http import h11_impl
from uvicorn.protocols.http.h11_impl import H11Protocol

from server.errors import error_body
from server.settings import get_settings


def _timeout_response(seconds: float) -> bytes:
    body = json.dumps(
        error_body("request_timeout", f"request headers not complete within {seconds:g} s")
    ).encode()
    head = (
        "HTTP/1.1 408 Request Timeout\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


_OVER_CAPACITY_BODY = json.dumps(
    error_body(
        "over_capacity",
        "the server holds as many connections and requests as it accepts "
        "(uvicorn --limit-concurrency); retry after the Retry-After delay",
    )
).encode()
_OVER_CAPACITY_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_OVER_CAPACITY_BODY)).encode()),
    (b"retry-after", b"1"),
    (b"connection", b"close"),
]


async def _over_capacity(scope, receive, send) -> None:
    # Built once: this answer is given exactly when the server is busiest.
    await send({"type": "http.response.start", "status": 503, "headers": _OVER_CAPACITY_HEADERS})
    await send({"type": "http.response.body", "body": _OVER_CAPACITY_BODY, "more_body": False})


# uvicorn's h11 protocol picks its over-limit app from this module global inside
# ``handle_events`` (no hook a subclass could override); only the server process loads this module.
h11_impl.service_unavailable = _over_capacity


class HeaderDeadlineH11Protocol(H11Protocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.header_timeout = get_settings().header_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._armed_for = None  # the cycle that was current when the deadline was set

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.cycle is not self._armed_for:  # a new request's head was parsed
            self._disarm()

    def on_response_complete(self) -> None:
        cycle = self.cycle
        super().on_response_complete()
        # No pipelined request started: the next head is due within the deadline.
        if self.cycle is cycle and not self.transport.is_closing():
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self._armed_for = self.cycle
        self._deadline = self.loop.call_later(self.header_timeout, self._timed_out)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _timed_out(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        # Bytes already received but no complete head: tell the client why; an idle
        # connection between requests is closed quietly, as keep-alive expiry does.
        if self.conn.their_state is h11.IDLE and self.conn.trailing_data[0]:
            self.transport.write(_timeout_response(self.header_timeout))
        self._unset_keepalive_if_required()
        self.transport.close()
