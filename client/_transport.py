"""The one layer that talks to the network: connection pools, retries, Retry-After, failover.

Each base URL (a replica) gets one pooled ``httpx.Client`` (or ``AsyncClient``), reused by every
call. A call goes to the next replica in round-robin order, skipping replicas that are cooling
down; when an attempt fails with a retryable error (see `RetryPolicy`) the transport

1. cools that replica down: for its ``Retry-After`` on 429/503, for ``DOWN_SECONDS`` when it
   could not be reached, so concurrent calls skip it too;
2. moves to the next replica (the same one when there is only one, or when the call is pinned);
3. sleeps ``max(full-jitter backoff, that replica's remaining cool-down)`` and tries again, with
   the same ``X-Request-Id``.

Errors that are not retryable, and the last error when the retries run out, are raised as the
typed errors of `client._errors`, with ``.attempts`` set. Nothing above this layer retries.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
import uuid
from typing import Any

import httpx

from client._config import RetryPolicy, Timeout
from client._errors import (
    APIStatusError,
    ConnectError,
    ConnectTimeout,
    ProtocolError,
    ReadError,
    TokenCreditError,
    TransportError,
    WriteError,
    error_from_response,
    map_httpx_exceptions,
)

__all__ = ["AsyncHTTPTransport", "HTTPTransport"]

# How long a replica that refused a connection is skipped by new calls.
DOWN_SECONDS = 1.0
USER_AGENT = "tokencredit-client/0.1"


def new_request_id() -> str:
    return uuid.uuid4().hex


class Replicas:
    """Round-robin over base URLs that skips replicas cooling down (thread-safe)."""

    def __init__(self, urls: list[str]):
        self.urls = list(urls)
        self._until = dict.fromkeys(self.urls, 0.0)  # monotonic time a replica is usable again
        self._next = 0
        self._lock = threading.Lock()

    def _pick(self, start: int) -> int:
        now = time.monotonic()
        n = len(self.urls)
        order = [(start + k) % n for k in range(n)]
        for i in order:
            if self._until[self.urls[i]] <= now:
                return i
        return min(order, key=lambda i: self._until[self.urls[i]])  # all cooling: soonest back

    def first(self) -> str:
        """The replica for a new call; advances the rotation."""
        with self._lock:
            i = self._pick(self._next)
            self._next = (i + 1) % len(self.urls)
            return self.urls[i]

    def after(self, failed: str) -> str:
        """The replica for the retry of an attempt that failed on ``failed``."""
        with self._lock:
            return self.urls[self._pick(self.urls.index(failed) + 1)]

    def cool(self, url: str, seconds: float) -> None:
        with self._lock:
            self._until[url] = max(self._until[url], time.monotonic() + seconds)

    def wait(self, url: str) -> float:
        """Seconds until ``url`` is usable again (0 when it is)."""
        with self._lock:
            return max(0.0, self._until[url] - time.monotonic())


class _Retrier:
    """The retry decision, shared by the sync and async loops."""

    def __init__(self, policy: RetryPolicy, replicas: Replicas):
        self.policy = policy
        self.replicas = replicas
        self._rng = random.Random()

    def retryable(self, error: TokenCreditError, idempotent: bool) -> bool:
        if isinstance(error, APIStatusError):
            return error.status in self.policy.statuses
        if isinstance(error, ConnectError | ConnectTimeout):
            return True  # nothing reached the server
        # The server closed a (kept-alive) connection before answering: safe to resend only if
        # sending twice does no harm.
        return idempotent and isinstance(error, ReadError | WriteError | ProtocolError)

    def next_attempt(
        self,
        error: TokenCreditError,
        url: str,
        attempt: int,
        *,
        idempotent: bool,
        pinned: bool,
        retries: int | None,
    ) -> tuple[str, float]:
        """(replica, seconds to sleep) for the retry after ``attempt`` (0-based) failed with
        ``error`` on ``url``; re-raises ``error`` when it is final."""
        limit = self.policy.retries if retries is None else retries
        if attempt >= limit or not self.retryable(error, idempotent):
            error.attempts = attempt + 1
            raise error
        if isinstance(error, APIStatusError):
            if error.retry_after is not None:
                self.replicas.cool(url, min(error.retry_after, self.policy.max_retry_after))
        elif isinstance(error, TransportError):
            self.replicas.cool(url, DOWN_SECONDS)
        nxt = url if pinned else self.replicas.after(url)
        delay = max(self.policy.backoff(attempt, self._rng), self.replicas.wait(nxt))
        return nxt, min(delay, max(self.policy.max_retry_after, self.policy.backoff_max))


def _plain(obj: Any) -> Any:
    """JSON for NumPy scalars and arrays (or tensors) left in a request body."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


class _BaseTransport:
    def __init__(
        self,
        base_urls: list[str],
        *,
        timeout: Timeout,
        retry: RetryPolicy,
        headers: dict[str, str] | None = None,
        limits: httpx.Limits | None = None,
    ):
        self.base_urls = list(base_urls)
        self.timeout = timeout
        self.retry = retry
        self.replicas = Replicas(self.base_urls)
        self._retrier = _Retrier(retry, self.replicas)
        self.headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        # Idle connections expire before uvicorn's 5 s keep-alive does, so a request never
        # races the server closing the connection under it.
        self.limits = limits or httpx.Limits(
            max_connections=64, max_keepalive_connections=16, keepalive_expiry=4.0
        )

    def _prepare(
        self, body: Any, request_id: str | None, headers: dict[str, str] | None
    ) -> tuple[bytes | None, dict[str, str], str]:
        rid = request_id or new_request_id()
        hdrs = {"X-Request-Id": rid, **(headers or {})}
        content = None
        if body is not None:
            # Serialised once, resent as is on every retry. -inf log-probs (json encoding) go out
            # as -Infinity, which the server's JSON parser reads.
            content = json.dumps(body, separators=(",", ":"), default=_plain).encode()
            hdrs["Content-Type"] = "application/json"
        return content, hdrs, rid

    def _check(self, response: httpx.Response, rid: str) -> TokenCreditError | None:
        return None if response.is_success else error_from_response(response, rid)


class HTTPTransport(_BaseTransport):
    """Synchronous transport: one ``httpx.Client`` per replica, thread-safe."""

    def __init__(
        self, base_urls: list[str], *, http_transport: httpx.BaseTransport | None = None, **kw
    ):
        super().__init__(base_urls, **kw)
        self._clients = {
            url: httpx.Client(
                base_url=url,
                headers=self.headers,
                timeout=self.timeout.as_httpx(),
                limits=self.limits,
                transport=http_transport,
            )
            for url in self.base_urls
        }

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        timeout: Timeout | None = None,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
        replica: str | None = None,
        retries: int | None = None,
    ) -> httpx.Response:
        """Send with retries and failover; a 2xx response, or the typed error raised.

        ``replica`` pins the call to one base URL (retries stay there); ``retries`` overrides the
        policy's count for this call (0: one attempt).
        """
        content, hdrs, rid = self._prepare(body, request_id, headers)
        tmo = (timeout or self.timeout).as_httpx()
        url = replica or self.replicas.first()
        attempt = 0
        while True:
            try:
                with map_httpx_exceptions(rid, url + path):
                    response = self._clients[url].request(
                        method, path, content=content, headers=hdrs, timeout=tmo
                    )
                error = self._check(response, rid)
            except TransportError as exc:
                error = exc
            if error is None:
                return response
            url, delay = self._retrier.next_attempt(
                error,
                url,
                attempt,
                idempotent=idempotent,
                pinned=replica is not None,
                retries=retries,
            )
            time.sleep(delay)
            attempt += 1

    def close(self) -> None:
        for client in self._clients.values():
            client.close()


class AsyncHTTPTransport(_BaseTransport):
    """Asynchronous transport: one ``httpx.AsyncClient`` per replica."""

    def __init__(
        self, base_urls: list[str], *, http_transport: httpx.AsyncBaseTransport | None = None, **kw
    ):
        super().__init__(base_urls, **kw)
        self._clients = {
            url: httpx.AsyncClient(
                base_url=url,
                headers=self.headers,
                timeout=self.timeout.as_httpx(),
                limits=self.limits,
                transport=http_transport,
            )
            for url in self.base_urls
        }

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        timeout: Timeout | None = None,
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
        replica: str | None = None,
        retries: int | None = None,
    ) -> httpx.Response:
        """Send with retries and failover; a 2xx response, or the typed error raised.

        ``replica`` pins the call to one base URL (retries stay there); ``retries`` overrides the
        policy's count for this call (0: one attempt).
        """
        content, hdrs, rid = self._prepare(body, request_id, headers)
        tmo = (timeout or self.timeout).as_httpx()
        url = replica or self.replicas.first()
        attempt = 0
        while True:
            try:
                with map_httpx_exceptions(rid, url + path):
                    response = await self._clients[url].request(
                        method, path, content=content, headers=hdrs, timeout=tmo
                    )
                error = self._check(response, rid)
            except TransportError as exc:
                error = exc
            if error is None:
                return response
            url, delay = self._retrier.next_attempt(
                error,
                url,
                attempt,
                idempotent=idempotent,
                pinned=replica is not None,
                retries=retries,
            )
            await asyncio.sleep(delay)
            attempt += 1

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
