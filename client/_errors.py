"""Everything the client raises, in one tree::

    TokenCreditError                  base of every client error
    ├── TransportError                no HTTP response came back
    │   ├── TimeoutException
    │   │   ├── ConnectTimeout        * retried / failed over
    │   │   ├── ReadTimeout
    │   │   ├── WriteTimeout
    │   │   └── PoolTimeout           no free connection in the client's pool
    │   ├── NetworkError
    │   │   ├── ConnectError          * refused, unreachable, DNS
    │   │   ├── ReadError             * (idempotent calls) connection reset before a response
    │   │   └── WriteError            * (idempotent calls) connection closed while sending
    │   └── ProtocolError             * (idempotent calls) server hung up without a response
    ├── APIStatusError                the server answered with an error status and JSON body
    │   ├── BadRequestError           400 (body is not JSON)
    │   ├── AuthenticationError       401 (missing API key)
    │   ├── PermissionDeniedError     403 (wrong key, admin key needed, path escapes root)
    │   ├── NotFoundError             404 (e.g. a route an older server does not have)
    │   ├── ConflictError             409
    │   │   └── StaleWeightsError     409 `stale_weights`: older than min_weights_version
    │   ├── PayloadTooLargeError      413 (lower max_request_tokens)
    │   ├── UnprocessableEntityError  422 (a field is invalid; `.field` names it)
    │   ├── RateLimitError            429 * (queue full; `.retry_after`)
    │   ├── InternalServerError       500 and other 5xx
    │   └── ServiceUnavailableError   502/503/504 * (loading, draining, proxy)
    ├── DecodeError                   a success response the client could not read
    └── WeightsPushError              a push_weights broadcast did not complete (no HTTP error)

``*`` marks what `RetryPolicy` retries. Every error carries ``request_id`` (the ``X-Request-Id``
of the call, the same across its retries), ``url`` and ``attempts``; `APIStatusError` also
carries ``status``, ``type``, ``message`` and ``field`` from the server's
``{"error": {"type", "message", "field"}}`` body.

httpx exceptions are translated in exactly one place, `map_httpx_exceptions`, and error responses
in one place, `error_from_response`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

__all__ = [
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ConnectError",
    "ConnectTimeout",
    "DecodeError",
    "InternalServerError",
    "NetworkError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PoolTimeout",
    "ProtocolError",
    "RateLimitError",
    "ReadError",
    "ReadTimeout",
    "ServiceUnavailableError",
    "StaleWeightsError",
    "TimeoutException",
    "TokenCreditError",
    "TransportError",
    "UnprocessableEntityError",
    "WeightsPushError",
    "WriteError",
    "WriteTimeout",
]


class TokenCreditError(Exception):
    """Base of every error the client raises."""

    def __init__(self, message: str, *, request_id: str | None = None, url: str | None = None):
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.url = url
        self.attempts = 1  # set by the transport when the call gave up after retries

    def __str__(self) -> str:
        extra = [f"request_id={self.request_id}"] if self.request_id else []
        if self.attempts > 1:
            extra.append(f"after {self.attempts} attempts")
        return f"{self.message} ({', '.join(extra)})" if extra else self.message


# ---- no response ----------------------------------------------------------------------------


class TransportError(TokenCreditError):
    """The request got no HTTP response (network, timeout, protocol)."""


class TimeoutException(TransportError):
    """A timeout of `Timeout` expired."""


class ConnectTimeout(TimeoutException):
    """No connection within ``Timeout.connect``; retried on the next replica."""


class ReadTimeout(TimeoutException):
    """No response within ``Timeout.read``; not retried (the server may still be working)."""


class WriteTimeout(TimeoutException):
    """The request body could not be sent within ``Timeout.write``."""


class PoolTimeout(TimeoutException):
    """No free pooled connection within ``Timeout.pool`` (too many concurrent calls)."""


class NetworkError(TransportError):
    """The connection failed."""


class ConnectError(NetworkError):
    """The connection could not be opened (refused, unreachable, DNS)."""


class ReadError(NetworkError):
    """The connection broke while waiting for the response."""


class WriteError(NetworkError):
    """The connection broke while sending the request."""


class ProtocolError(TransportError):
    """The server closed the connection without a valid HTTP response."""


# ---- error responses ------------------------------------------------------------------------


class APIStatusError(TokenCreditError):
    """The server answered with an error status; fields from its JSON error body."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        type: str = "error",
        field: str | None = None,
        request_id: str | None = None,
        url: str | None = None,
        retry_after: float | None = None,
        body: Any = None,
    ):
        super().__init__(message, request_id=request_id, url=url)
        self.status = status
        self.type = type
        self.field = field
        self.retry_after = retry_after
        self.body = body

    def __str__(self) -> str:
        head = f"{self.status} {self.type}: {super().__str__()}"
        return f"{head} [field: {self.field}]" if self.field else head


class BadRequestError(APIStatusError):
    """400: the body is not valid JSON."""


class AuthenticationError(APIStatusError):
    """401: no API key was sent (pass ``api_key=`` or set ``TC_API_KEY``)."""


class PermissionDeniedError(APIStatusError):
    """403: the key is not accepted, or an admin key is needed (``POST /v1/weights``)."""


class NotFoundError(APIStatusError):
    """404: no such route (an older server?) or object."""


class ConflictError(APIStatusError):
    """409: the request conflicts with the server's state."""


class StaleWeightsError(ConflictError):
    """409 ``stale_weights``: the loaded weights are older than ``min_weights_version``, or a
    weights ``version`` does not increase."""


class PayloadTooLargeError(APIStatusError):
    """413: the body is over the server's ``TC_MAX_BODY_BYTES``; lower ``max_request_tokens``."""


class UnprocessableEntityError(APIStatusError):
    """422: a field is invalid; ``.field`` holds its JSON path, e.g. ``sequences[3].target_ids``."""


class RateLimitError(APIStatusError):
    """429: the replica's queue is full; ``.retry_after`` says when to come back."""


class InternalServerError(APIStatusError):
    """500 (or another 5xx not listed): a server bug; see the server log for ``request_id``."""


class ServiceUnavailableError(APIStatusError):
    """502/503/504: the replica is loading its model, draining, or behind a failing proxy."""


class DecodeError(TokenCreditError):
    """A success response whose body the client could not read."""


class WeightsPushError(TokenCreditError):
    """A weights push stopped without an error answer from a replica (a refusal read from the
    rendezvous store, a replica that never joined, a broken broadcast). The replicas keep their
    old weights; the next push joins them again."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: UnprocessableEntityError,
    429: RateLimitError,
    502: ServiceUnavailableError,
    503: ServiceUnavailableError,
    504: ServiceUnavailableError,
}


def retry_after_seconds(response: httpx.Response) -> float | None:
    """``Retry-After`` in seconds (delta-seconds form; an HTTP date is read as well)."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
        date = response.headers.get("date")
        now = parsedate_to_datetime(date) if date else dt.datetime.now(dt.timezone.utc)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - now).total_seconds())


def error_from_response(response: httpx.Response, request_id: str | None) -> APIStatusError:
    """The typed error of a non-2xx response (the one place server error bodies are read)."""
    status = response.status_code
    rid = response.headers.get("x-request-id") or request_id
    body: Any = None
    kind, message, field = "error", None, None
    try:
        body = response.json()
        info = body.get("error") if isinstance(body, dict) else None
        if isinstance(info, dict):
            kind = str(info.get("type") or kind)
            message = info.get("message")
            field = info.get("field")
    except ValueError:
        body = response.text
    if not message:
        text = response.text.strip().replace("\n", " ")
        message = f"HTTP {status} {response.reason_phrase}" + (f": {text[:200]}" if text else "")
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = InternalServerError if status >= 500 else APIStatusError
    if cls is ConflictError and kind == "stale_weights":
        cls = StaleWeightsError
    return cls(
        str(message),
        status=status,
        type=kind,
        field=field,
        request_id=rid,
        url=str(response.request.url) if response.request else None,
        retry_after=retry_after_seconds(response),
        body=body,
    )


# Most specific first: httpx's timeouts and network errors are siblings of one another.
_HTTPX_MAP: tuple[tuple[type[Exception], type[TransportError]], ...] = (
    (httpx.ConnectTimeout, ConnectTimeout),
    (httpx.ReadTimeout, ReadTimeout),
    (httpx.WriteTimeout, WriteTimeout),
    (httpx.PoolTimeout, PoolTimeout),
    (httpx.TimeoutException, TimeoutException),
    (httpx.ConnectError, ConnectError),
    (httpx.ReadError, ReadError),
    (httpx.WriteError, WriteError),
    (httpx.NetworkError, NetworkError),
    (httpx.ProtocolError, ProtocolError),
    (httpx.TransportError, TransportError),
)


@contextlib.contextmanager
def map_httpx_exceptions(request_id: str | None, url: str | None) -> Iterator[None]:
    """Translate httpx's transport exceptions into ours (the one place this happens)."""
    try:
        yield
    except httpx.TransportError as exc:
        to_cls = next(ours for theirs, ours in _HTTPX_MAP if isinstance(exc, theirs))
        detail = str(exc) or type(exc).__name__
        raise to_cls(
            f"{to_cls.__name__} for {url}: {detail}", request_id=request_id, url=url
        ) from exc
