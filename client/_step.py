"""A whole call tried again for a bounded time, after the transport's own retries gave up.

The transport (`RetryPolicy`) rides out a blip: seconds to a couple of minutes of retries and
failover. A training step must also ride out a teacher replica restarting (minutes), without a
loop of its own in every trainer. `retry_within` is that loop, once, for idempotent calls (all
scoring calls are: same body, same answer)::

    result = retry_within(lambda: tc.advantages(...), StepRetry(seconds=1800), on_wait=log)

Tried again: what the transport retries and gave up on (connection failures, 429, 502-504) and
read/write timeouts (a restarting replica), after a wait that doubles from ``wait`` up to
``wait_max``. A `StaleWeightsError` (409) is tried again at once when ``recover`` says it put the
missing weights back (a replica restarted on its base model). Everything else raises at once: a
4xx stays wrong however often it is sent, and a 500 is a server bug.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from client._errors import APIStatusError, StaleWeightsError, TokenCreditError, TransportError

__all__ = ["StepRetry", "retry_within"]

T = TypeVar("T")


@dataclass(frozen=True)
class StepRetry:
    """How long `retry_within` keeps trying one call (0 seconds: try once)."""

    # Total time budget from the first attempt; no new attempt starts after it.
    seconds: float = 1800.0
    # Wait before the first retry; doubled each time up to wait_max.
    wait: float = 5.0
    wait_max: float = 120.0
    # Statuses tried again (beyond transport errors); 409 is handled by ``recover``.
    statuses: frozenset[int] = frozenset({429, 502, 503, 504})

    def __post_init__(self) -> None:
        if self.seconds < 0 or self.wait < 0 or self.wait_max < 0:
            raise ValueError("StepRetry seconds, wait and wait_max must be >= 0")


def _retryable(exc: TokenCreditError, policy: StepRetry) -> bool:
    if isinstance(exc, TransportError):
        return True
    return isinstance(exc, APIStatusError) and exc.status in policy.statuses


def retry_within(
    call: Callable[[], T],
    policy: StepRetry,
    *,
    on_wait: Callable[[int, float, TokenCreditError], None] | None = None,
    recover: Callable[[StaleWeightsError], bool] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """``call()`` until it returns, a non-retryable error, or ``policy.seconds`` have passed.

    ``on_wait(attempt, seconds, error)`` is called before every wait (log it). ``recover(error)``
    handles a 409: True means the weights were put back and the call is tried again at once.
    The last error is raised when time runs out.
    """
    deadline = clock() + policy.seconds
    wait = policy.wait
    attempt = 0
    while True:
        attempt += 1
        try:
            return call()
        except TokenCreditError as exc:
            error = exc
            if isinstance(exc, StaleWeightsError):
                if recover is None or clock() >= deadline:
                    raise
                try:
                    recovered = recover(exc)
                except TokenCreditError as inner:  # e.g. the restarted replica still loading
                    error, recovered = inner, False
                else:
                    if not recovered:
                        raise
                if recovered:
                    if on_wait is not None:
                        on_wait(attempt, 0.0, exc)
                    continue
            left = deadline - clock()
            if not _retryable(error, policy) or left <= 0:
                raise error from error.__cause__
            pause = min(wait, left)
            if on_wait is not None:
                on_wait(attempt, pause, error)
            sleep(pause)
            wait = min(wait * 2, policy.wait_max)
