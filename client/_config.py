"""Client configuration: timeouts, the retry policy, and the "not passed" sentinel.

    >>> Timeout()                      # the default: 5 s to connect, 120 s for the rest
    Timeout(connect=5.0, read=120.0, write=120.0, pool=120.0)
    >>> Timeout(10.0)                  # 10 s for every phase
    Timeout(connect=10.0, read=10.0, write=10.0, pool=10.0)
    >>> Timeout(60.0, connect=2.0)     # 2 s to connect, 60 s for the rest
    Timeout(connect=2.0, read=60.0, write=60.0, pool=60.0)
    >>> Timeout(None)                  # no timeouts at all (only when you mean it)
    Timeout(connect=None, read=None, write=None, pool=None)

Per call, ``timeout=USE_CLIENT_DEFAULT`` (the default) means "the client's timeout", and
``timeout=None`` means "no timeout", as in httpx.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Any

import httpx

__all__ = [
    "DEFAULT_TIMEOUT",
    "USE_CLIENT_DEFAULT",
    "RetryPolicy",
    "Timeout",
    "UseClientDefault",
]

# Used when no base URL is given and TC_URL is unset: a server started with plain `uvicorn`.
DEFAULT_BASE_URL = "http://127.0.0.1:8000"


class UseClientDefault:
    """Type of `USE_CLIENT_DEFAULT`: tells "argument not passed" apart from ``None``.

    ``client.logprobs(..., timeout=None)`` disables the timeout for that call, while leaving the
    argument out keeps the client's timeout.
    """

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT = UseClientDefault()
_UNSET: Any = object()


class Timeout:
    """Timeouts in seconds for the four phases of a request; ``None`` disables one.

    - ``connect``: opening the TCP connection. Short: a replica that does not accept in 5 s is
      treated as down and the call fails over to the next one.
    - ``read``: waiting for the response bytes. Long: scoring a large batch on a busy server
      legitimately takes tens of seconds. Read timeouts are never retried.
    - ``write``: sending the request body.
    - ``pool``: waiting for a free connection from the client's pool.
    """

    def __init__(
        self,
        timeout: float | Timeout | None = _UNSET,
        *,
        connect: float | None = _UNSET,
        read: float | None = _UNSET,
        write: float | None = _UNSET,
        pool: float | None = _UNSET,
    ):
        if isinstance(timeout, Timeout):
            base = timeout
            self.connect, self.read = base.connect, base.read
            self.write, self.pool = base.write, base.pool
        elif timeout is _UNSET:
            self.connect, self.read, self.write, self.pool = 5.0, 120.0, 120.0, 120.0
        else:
            self.connect = self.read = self.write = self.pool = _seconds(timeout, "timeout")
        if connect is not _UNSET:
            self.connect = _seconds(connect, "connect")
        if read is not _UNSET:
            self.read = _seconds(read, "read")
        if write is not _UNSET:
            self.write = _seconds(write, "write")
        if pool is not _UNSET:
            self.pool = _seconds(pool, "pool")

    def as_httpx(self) -> httpx.Timeout:
        return httpx.Timeout(connect=self.connect, read=self.read, write=self.write, pool=self.pool)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Timeout) and (
            (self.connect, self.read, self.write, self.pool)
            == (other.connect, other.read, other.write, other.pool)
        )

    def __hash__(self) -> int:
        return hash((self.connect, self.read, self.write, self.pool))

    def __repr__(self) -> str:
        return (
            f"Timeout(connect={self.connect}, read={self.read}, write={self.write}, "
            f"pool={self.pool})"
        )


def _seconds(value: float | None, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(
            f"timeout {name} must be a positive number of seconds or None, got {value!r}"
        )
    return float(value)


DEFAULT_TIMEOUT = Timeout()
TimeoutTypes = float | None | Timeout


def to_timeout(value: TimeoutTypes | UseClientDefault, default: Timeout) -> Timeout:
    """A per-call ``timeout`` argument resolved against the client's default."""
    if isinstance(value, UseClientDefault):
        return default
    return Timeout(value)


@dataclass(frozen=True)
class RetryPolicy:
    """When and how often the transport tries a call again.

    Retried, with exponential backoff and full jitter
    (``sleep = uniform(0, min(backoff_max, backoff_base * 2**retry))``, see
    https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/):

    - connection failures before any response: refused, reset, connect timeout, and (for
      idempotent calls, which all scoring calls are) a keep-alive connection the server closed
      under us;
    - ``429`` (queue full): the replica is not asked again before its ``Retry-After`` (capped at
      ``max_retry_after``);
    - ``502``, ``503``, ``504`` (a replica loading, draining or behind a failing proxy);
      ``Retry-After`` is honoured the same way when present.

    Never retried: any other 4xx (the request is wrong and will stay wrong), ``500``, and read or
    write timeouts (the server may still be working on it; asking again only adds load).

    With several base URLs each retry goes to the next replica in round-robin order, so a dead or
    overloaded replica costs one attempt, not the call.
    """

    # Retries after the first attempt (0 disables retrying). Should be >= replicas - 1.
    retries: int = 4
    # Full-jitter backoff: the n-th retry sleeps uniform(0, min(backoff_max, backoff_base * 2**n)).
    backoff_base: float = 0.1
    backoff_max: float = 5.0
    # Longest Retry-After honoured; a longer one is cut to this.
    max_retry_after: float = 30.0
    # HTTP statuses retried (and failed over).
    statuses: frozenset[int] = field(default_factory=lambda: frozenset({429, 502, 503, 504}))

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ValueError(f"retries must be >= 0 (0 disables retrying), got {self.retries}")
        if self.backoff_base < 0 or self.backoff_max < 0 or self.max_retry_after < 0:
            raise ValueError("backoff_base, backoff_max and max_retry_after must be >= 0 seconds")
        bad = {s for s in self.statuses if s < 400 or s in (400, 401, 403, 404, 409, 413, 422)}
        if bad:
            raise ValueError(
                f"statuses {sorted(bad)} must not be retried: they fail the same way every time; "
                "retry only 429 and 5xx"
            )

    def backoff(self, retry: int, rng: random.Random | None = None) -> float:
        """Full-jitter sleep before retry number ``retry`` (0-based)."""
        cap = min(self.backoff_max, self.backoff_base * (2.0**retry))
        return (rng or random).uniform(0.0, cap)


def base_urls_from(base_url: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Base URLs from the argument, else ``TC_URL`` (comma-separated), else the local default."""
    if base_url is None:
        base_url = os.environ.get("TC_URL") or DEFAULT_BASE_URL
    urls = base_url.split(",") if isinstance(base_url, str) else list(base_url)
    urls = [u.strip().rstrip("/") for u in urls if u and u.strip()]
    if not urls:
        raise ValueError("no base URL: pass base_url=... or set TC_URL")
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"base URL {url!r} must start with http:// or https://")
    if len(set(urls)) != len(urls):
        raise ValueError(f"base URLs repeat: {urls}")
    return urls
