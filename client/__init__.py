"""Python SDK of the tokencredit teacher-scoring service (docs/api.md), sync and async.

    >>> from client import TeacherClient
    >>> tc = TeacherClient("http://127.0.0.1:8000")                        # doctest: +SKIP
    >>> tc.logprobs([{"context_ids": [1, 2], "target_ids": [3]}])[0].logprobs  # doctest: +SKIP
    array([-5.48], dtype=float32)

Packed binary arrays on the wire, pooled connections, finite timeouts, retries with backoff and
Retry-After, failover across replicas, and large calls split under a token budget. See
docs/client.md.
"""

from client._client import SPLITTABLE_METHODS, AsyncTeacherClient, TeacherClient
from client._config import (
    DEFAULT_TIMEOUT,
    USE_CLIENT_DEFAULT,
    RetryPolicy,
    Timeout,
    UseClientDefault,
)
from client._errors import (
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    ConnectError,
    ConnectTimeout,
    DecodeError,
    InternalServerError,
    NetworkError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PoolTimeout,
    ProtocolError,
    RateLimitError,
    ReadError,
    ReadTimeout,
    ServiceUnavailableError,
    StaleWeightsError,
    TimeoutException,
    TokenCreditError,
    TransportError,
    UnprocessableEntityError,
    WeightsPushError,
    WriteError,
    WriteTimeout,
)
from client._step import StepRetry, retry_within
from client._transport import AsyncHTTPTransport, HTTPTransport
from client._types import (
    AdvantagesResult,
    CreditDetails,
    LogprobsResult,
    RolloutCredit,
    TokenScores,
)
from client._weights_push import BACKENDS as PUSH_BACKENDS

__all__ = [
    "DEFAULT_TIMEOUT",
    "PUSH_BACKENDS",
    "SPLITTABLE_METHODS",
    "USE_CLIENT_DEFAULT",
    "APIStatusError",
    "AdvantagesResult",
    "AsyncHTTPTransport",
    "AsyncTeacherClient",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "ConnectError",
    "ConnectTimeout",
    "CreditDetails",
    "DecodeError",
    "HTTPTransport",
    "InternalServerError",
    "LogprobsResult",
    "NetworkError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PoolTimeout",
    "ProtocolError",
    "RateLimitError",
    "ReadError",
    "ReadTimeout",
    "RetryPolicy",
    "RolloutCredit",
    "ServiceUnavailableError",
    "StaleWeightsError",
    "StepRetry",
    "TeacherClient",
    "Timeout",
    "TimeoutException",
    "TokenCreditError",
    "TokenScores",
    "TransportError",
    "UnprocessableEntityError",
    "UseClientDefault",
    "WeightsPushError",
    "WriteError",
    "WriteTimeout",
    "retry_within",
]
