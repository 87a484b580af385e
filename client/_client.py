"""`TeacherClient` (sync) and `AsyncTeacherClient`: typed methods for every route of docs/api.md.

    >>> from client import TeacherClient
    >>> with TeacherClient(["http://teacher-0:8000", "http://teacher-1:8000"]) as tc:  # doctest: +SKIP
    ...     res = tc.logprobs([{"context_ids": [1, 2, 3], "target_ids": [4, 5]}], top_k=5)
    ...     res[0].logprobs          # np.ndarray (2,) float32
    ...     adv = tc.advantages("antisd", groups, step=12, state=prev.state)
    ...     adv.groups[0][3].advantages

Both clients build the same requests and read the same answers (`_Api`); they differ only in
how they send them. Retries, Retry-After and failover live in the transport (`_transport.py`),
never here. What this layer adds on top is splitting: a ``logprobs`` call over
``max_request_tokens`` (context + target tokens) goes out as several requests, concurrently and
to different replicas, and is reassembled in input order. ``advantages`` is split by groups only
for methods whose numbers do not depend on the rest of the batch (`SPLITTABLE_METHODS`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from client._config import (
    DEFAULT_TIMEOUT,
    USE_CLIENT_DEFAULT,
    RetryPolicy,
    Timeout,
    TimeoutTypes,
    UseClientDefault,
    base_urls_from,
    to_timeout,
)
from client._errors import DecodeError, TokenCreditError
from client._transport import AsyncHTTPTransport, HTTPTransport, new_request_id
from client._types import (
    AdvantagesResult,
    Encoding,
    LogprobsResult,
    encode,
    group_body,
    group_tokens,
    merge_stats,
    parse_model,
    rollout_credit,
    sequence_ids,
    split_by_tokens,
    to_torch,
    token_scores,
)
from client._weights_push import WeightsPusher
from proto import (
    METHODS,
    AdvantageStats,
    ChatMessage,
    HealthResponse,
    HintsRequest,
    HintsResponse,
    ModelInfo,
    ReadyResponse,
    RewardResponse,
    TokenizeRequest,
    TokenizeResponse,
    Usage,
    WeightsRequest,
    WeightsResponse,
)
from proto.weights_push import DEFAULT_BUCKET_BYTES, WeightsPushResponse

__all__ = ["SPLITTABLE_METHODS", "AsyncTeacherClient", "TeacherClient"]

# Methods whose advantages for a group depend only on that group, so a call can be split by
# groups and give the same numbers. Not splittable: `antisd` (its entropy gate updates once per
# call from the whole batch, and its peer draws use one RNG over the batch), `hsd` (peer draws
# over the batch), `opd` (centred by the batch mean). `amrsd` is splittable only when every
# rollout brings its own `reflection` (otherwise the server may sample reflections batch-wide).
SPLITTABLE_METHODS = frozenset({"grpo", "dr_grpo", "opsd", "sdpo", "rlsd"})

# Default token budget of one request (context + target tokens summed over its sequences).
DEFAULT_MAX_REQUEST_TOKENS = 32768


@dataclass
class _Call:
    """One API call as HTTP requests: ``bodies[i]`` goes to ``replicas[i]`` (None: any replica),
    and ``combine`` turns the decoded JSON answers (same order) into the result."""

    method: str
    path: str
    bodies: list[Any]
    combine: Callable[[list[Any]], Any]
    replicas: list[str | None] | None = None
    sequential: bool = False
    idempotent: bool = True
    admin: bool = False
    retries: int | None = None


def _splittable(method: str, groups: Sequence[Any]) -> bool:
    if method in SPLITTABLE_METHODS:
        return True
    if method == "amrsd":
        return all(
            _get(r, "reflection") is not None for g in groups for r in (_get(g, "rollouts") or ())
        )
    return False


def _get(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


class _Api:
    """Configuration, request building and response reading shared by both clients."""

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        api_key: str | None = None,
        admin_key: str | None = None,
        timeout: TimeoutTypes = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        encoding: Encoding = "base64",
        max_request_tokens: int | None = DEFAULT_MAX_REQUEST_TOKENS,
        max_concurrency: int = 4,
        headers: Mapping[str, str] | None = None,
        limits: httpx.Limits | None = None,
    ):
        if encoding not in ("base64", "json"):
            raise ValueError(f'encoding must be "base64" or "json", got {encoding!r}')
        if max_request_tokens is not None and max_request_tokens < 1:
            raise ValueError("max_request_tokens must be >= 1, or None to never split calls")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        self.base_urls = base_urls_from(base_url)
        self.api_key = api_key if api_key is not None else os.environ.get("TC_API_KEY") or None
        self.admin_key = (
            admin_key if admin_key is not None else os.environ.get("TC_ADMIN_KEY") or None
        )
        self.timeout = Timeout(timeout)
        self.retry = retry or RetryPolicy()
        self.encoding: Encoding = encoding
        self.max_request_tokens = max_request_tokens
        self.max_concurrency = max_concurrency
        self._transport_kw: dict[str, Any] = {
            "timeout": self.timeout,
            "retry": self.retry,
            "headers": dict(headers or {}),
            "limits": limits,
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_urls!r})"

    # ---- helpers ------------------------------------------------------------------------------

    def _headers(self, admin: bool) -> dict[str, str]:
        key = (self.admin_key or self.api_key) if admin else self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _encoding(self, encoding: Encoding | None) -> Encoding:
        encoding = encoding or self.encoding
        if encoding not in ("base64", "json"):
            raise ValueError(f'encoding must be "base64" or "json", got {encoding!r}')
        return encoding

    def _budget(self, value: int | UseClientDefault | None) -> int | None:
        return self.max_request_tokens if isinstance(value, UseClientDefault) else value

    @staticmethod
    def _combine(call: _Call, payloads: list[Any], request_id: str) -> Any:
        try:
            return call.combine(payloads)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DecodeError(
                f"unexpected answer from {call.path}: {type(exc).__name__}: {exc}",
                request_id=request_id,
            ) from exc

    @staticmethod
    def _json(response: httpx.Response, request_id: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise DecodeError(
                f"{response.request.url} answered {response.status_code} with a body that is "
                f"not JSON: {response.text[:200]!r}",
                request_id=response.headers.get("x-request-id") or request_id,
                url=str(response.request.url),
            ) from exc

    # ---- calls --------------------------------------------------------------------------------

    def _health_call(self, path: str, model: Any, replica: str | None) -> _Call:
        return _Call(
            "GET",
            path,
            [None],
            lambda p: parse_model(model, p[0]),
            replicas=[replica],
            retries=0,
        )

    def _model_call(self) -> _Call:
        return _Call("GET", "/v1/model", [None], lambda p: parse_model(ModelInfo, p[0]))

    def _tokenize_call(
        self, text: str | None, messages: Sequence[Any] | None, add_generation_prompt: bool
    ) -> _Call:
        msgs = None
        if messages is not None:
            msgs = [m if isinstance(m, ChatMessage) else ChatMessage(**m) for m in messages]
        body = TokenizeRequest(
            text=text, messages=msgs, add_generation_prompt=add_generation_prompt
        ).model_dump(exclude_none=True)
        return _Call(
            "POST", "/v1/tokenize", [body], lambda p: parse_model(TokenizeResponse, p[0]).ids
        )

    def _logprobs_call(
        self,
        sequences: Sequence[Any],
        top_k: int,
        entropy: bool,
        temperature: float,
        min_weights_version: int | None,
        encoding: Encoding | None,
        as_torch: bool,
        max_request_tokens: int | UseClientDefault | None,
    ) -> _Call:
        enc = self._encoding(encoding)
        pairs = [sequence_ids(s) for s in sequences]
        if not pairs:
            raise ValueError("sequences is empty: give at least one {context_ids, target_ids}")
        ranges = split_by_tokens(
            [len(c) + len(t) for c, t in pairs], self._budget(max_request_tokens)
        )
        options = {"top_k": top_k, "entropy": entropy, "temperature": temperature, "encoding": enc}
        if min_weights_version is not None:
            options["min_weights_version"] = min_weights_version
        bodies = [
            {
                "sequences": [
                    {
                        "context_ids": encode(pairs[i][0], "int", enc),
                        "target_ids": encode(pairs[i][1], "int", enc),
                    }
                    for i in r
                ],
                **options,
            }
            for r in ranges
        ]

        def combine(payloads: list[Any]) -> LogprobsResult:
            results = [token_scores(res, top_k) for p in payloads for res in p["results"]]
            if len(results) != len(pairs):
                raise ValueError(f"{len(results)} results for {len(pairs)} sequences")
            usage = [parse_model(Usage, p["usage"]) for p in payloads]
            out = LogprobsResult(
                sequences=results,
                weights_version=min(int(p["weights_version"]) for p in payloads),
                entropy_kind=payloads[0]["entropy_kind"],
                usage=Usage(
                    sequences=sum(u.sequences for u in usage),
                    target_tokens=sum(u.target_tokens for u in usage),
                    processed_tokens=sum(u.processed_tokens for u in usage),
                ),
                chunks=len(payloads),
            )
            if as_torch:
                out.sequences = to_torch(out.sequences)
            return out

        return _Call("POST", "/v1/logprobs", bodies, combine)

    def _advantages_call(
        self,
        method: str,
        groups: Sequence[Any],
        params: Mapping[str, Any] | None,
        step: int,
        state: Mapping[str, Any] | None,
        seed: int,
        return_details: bool,
        min_weights_version: int | None,
        encoding: Encoding | None,
        as_torch: bool,
        max_request_tokens: int | UseClientDefault | None,
    ) -> _Call:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
        enc = self._encoding(encoding)
        groups = list(groups)
        if not groups:
            raise ValueError("groups is empty: give at least one group of rollouts")
        ranges = [range(len(groups))]
        if _splittable(method, groups):
            ranges = split_by_tokens(
                [group_tokens(g) for g in groups], self._budget(max_request_tokens)
            )
        options: dict[str, Any] = {
            "method": method,
            "params": dict(params or {}),
            "step": step,
            "state": dict(state) if state is not None else None,
            "seed": seed,
            "encoding": enc,
            "return_details": return_details,
        }
        if min_weights_version is not None:
            options["min_weights_version"] = min_weights_version
        bodies = [{**options, "groups": [group_body(groups[i], enc) for i in r]} for r in ranges]

        def combine(payloads: list[Any]) -> AdvantagesResult:
            out_groups = [
                [rollout_credit(r) for r in g["rollouts"]] for p in payloads for g in p["groups"]
            ]
            if len(out_groups) != len(groups):
                raise ValueError(f"{len(out_groups)} groups answered for {len(groups)} sent")
            states = [p.get("state") for p in payloads if p.get("state") is not None]
            out = AdvantagesResult(
                method=payloads[0]["method"],
                weights_version=min(int(p["weights_version"]) for p in payloads),
                state=states[-1] if states else None,
                groups=out_groups,
                stats=merge_stats([parse_model(AdvantageStats, p["stats"]) for p in payloads]),
                chunks=len(payloads),
            )
            if as_torch:
                out.groups = to_torch(out.groups)
            return out

        return _Call("POST", "/v1/advantages", bodies, combine)

    def _hints_call(
        self,
        groups: Sequence[Any],
        max_tokens: int,
        temperature: float,
        seed: int,
        templates: Mapping[str, Any] | None,
        min_weights_version: int | None,
    ) -> _Call:
        request = HintsRequest.model_validate(
            {
                "groups": [g.model_dump() if hasattr(g, "model_dump") else g for g in groups],
                "max_tokens": max_tokens,
                "temperature": temperature,
                "seed": seed,
                "templates": templates,
                "min_weights_version": min_weights_version,
            }
        )
        body = request.model_dump(exclude_none=True)
        return _Call("POST", "/v1/hints", [body], lambda p: parse_model(HintsResponse, p[0]))

    def _reward_call(
        self, query: Sequence[str], prompts: Sequence[str] | None, labels: Sequence[Any] | None
    ) -> _Call:
        body: dict[str, Any] = {"query": list(query)}
        if prompts is not None:
            body["prompts"] = list(prompts)
        if labels is not None:
            body["labels"] = list(labels)
        return _Call("POST", "/get_reward", [body], lambda p: parse_model(RewardResponse, p[0]))

    def _weights_call(self, path: str, version: int | None) -> _Call:
        body = WeightsRequest(path=path, version=version).model_dump()

        def combine(payloads: list[Any]) -> WeightsResponse:
            answers = [parse_model(WeightsResponse, p) for p in payloads]
            return WeightsResponse(
                weights_version=min(a.weights_version for a in answers),
                load_seconds=max(a.load_seconds for a in answers),
            )

        urls: list[str | None] = list(self.base_urls)
        return _Call(
            "POST",
            "/v1/weights",
            [body] * len(urls),
            combine,
            replicas=urls,
            sequential=True,  # a rolling update: one replica pauses at a time
            idempotent=False,
            admin=True,
        )

    @staticmethod
    def _transfer_call(path: str, body: dict, url: str) -> _Call:
        """One admin POST of the weights push (client/_weights_push.py) to one replica."""
        return _Call(
            "POST",
            path,
            [body],
            lambda p: p[0],
            replicas=[url],
            idempotent=False,
            admin=True,
            retries=0,
        )

    def _pusher_kw(self, kw: dict[str, Any]) -> dict[str, Any]:
        """Pusher settings of a push_weights call; None entries keep the pusher's defaults."""
        return {k: v for k, v in kw.items() if v is not None}


# ---- sync ---------------------------------------------------------------------------------


class TeacherClient(_Api):
    """Synchronous client of a tokencredit server or a pool of replicas. Thread-safe.

    Args:
        base_url: one URL, a list of replica URLs, or None for ``TC_URL`` (comma-separated
            allowed) or ``http://127.0.0.1:8000``.
        api_key: sent as ``Authorization: Bearer``; default ``TC_API_KEY``.
        admin_key: used for `load_weights` instead of ``api_key``; default ``TC_ADMIN_KEY``.
        timeout: a `Timeout`, seconds for every phase, or None for no timeout; the default is
            5 s to connect and 120 s for the rest.
        retry: `RetryPolicy` (default: 4 retries on connection errors, 429, 502-504).
        encoding: ``"base64"`` (packed arrays both ways, the default) or ``"json"``.
        max_request_tokens: split ``logprobs`` (and splittable ``advantages``) calls into
            requests of at most this many tokens; None never splits.
        max_concurrency: chunks of one call in flight at once.
        headers: extra headers on every request.
        limits: ``httpx.Limits`` of each replica's connection pool.
        http_transport: an ``httpx`` transport under every replica's pool (``MockTransport``,
            ``ASGITransport`` ...) for tests.
    """

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        http_transport: httpx.BaseTransport | None = None,
        **kw: Any,
    ):
        super().__init__(base_url, **kw)
        self._transport = HTTPTransport(
            self.base_urls, http_transport=http_transport, **self._transport_kw
        )
        self._pusher: WeightsPusher | None = None
        self._pusher_lock = threading.Lock()

    # ---- plumbing -----------------------------------------------------------------------------

    def _send(self, call: _Call, body: Any, replica: str | None, timeout: Timeout, rid: str) -> Any:
        response = self._transport.request(
            call.method,
            call.path,
            body=body,
            timeout=timeout,
            request_id=rid,
            headers=self._headers(call.admin),
            idempotent=call.idempotent,
            replica=replica,
            retries=call.retries,
        )
        return self._json(response, rid)

    def _run(
        self, call: _Call, timeout: TimeoutTypes | UseClientDefault, request_id: str | None
    ) -> Any:
        tmo = to_timeout(timeout, self.timeout)
        rid = request_id or new_request_id()
        replicas = call.replicas or [None] * len(call.bodies)
        n = len(call.bodies)
        ids = [rid] if n == 1 else [f"{rid}.{i}" for i in range(n)]
        if n == 1 or call.sequential or self.max_concurrency == 1:
            payloads = [
                self._send(call, b, r, tmo, i) for b, r, i in zip(call.bodies, replicas, ids)
            ]
        else:
            with cf.ThreadPoolExecutor(min(self.max_concurrency, n)) as pool:
                futures = [
                    pool.submit(self._send, call, b, r, tmo, i)
                    for b, r, i in zip(call.bodies, replicas, ids)
                ]
                try:
                    payloads = [f.result() for f in futures]
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise
        return self._combine(call, payloads, rid)

    def close(self) -> None:
        """Close every replica's connection pool (and the weight-transfer groups, if any)."""
        if self._pusher is not None:
            self._pusher.close()
        self._transport.close()

    def __enter__(self) -> TeacherClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- health -------------------------------------------------------------------------------

    def healthz(
        self,
        *,
        replica: str | None = None,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
    ) -> HealthResponse:
        """``GET /healthz`` of one replica (the next in rotation by default); never retried."""
        return self._run(self._health_call("/healthz", HealthResponse, replica), timeout, None)

    def readyz(
        self,
        *,
        replica: str | None = None,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
    ) -> ReadyResponse:
        """``GET /readyz`` of one replica; raises `ServiceUnavailableError` while it loads."""
        return self._run(self._health_call("/readyz", ReadyResponse, replica), timeout, None)

    def wait_ready(self, timeout: float = 300.0, interval: float = 0.5) -> None:
        """Block until every replica answers ``/readyz``; re-raise the last error after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for url in self.base_urls:
            while True:
                try:
                    self.readyz(replica=url, timeout=Timeout(min(5.0, timeout)))
                    break
                except TokenCreditError:
                    if time.monotonic() + interval > deadline:
                        raise
                    time.sleep(interval)

    # ---- API ----------------------------------------------------------------------------------

    def model(self, *, timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT) -> ModelInfo:
        """``GET /v1/model``: model, backend, vocab size, limits, weights version, methods."""
        return self._run(self._model_call(), timeout, None)

    def tokenize(
        self,
        text: str | None = None,
        *,
        messages: Sequence[Mapping[str, str] | ChatMessage] | None = None,
        add_generation_prompt: bool = True,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
    ) -> list[int]:
        """Token ids of ``text``, or of chat ``messages`` through the model's chat template."""
        call = self._tokenize_call(text, messages, add_generation_prompt)
        return self._run(call, timeout, None)

    def logprobs(
        self,
        sequences: Sequence[Any],
        *,
        top_k: int = 0,
        entropy: bool = False,
        temperature: float = 1.0,
        min_weights_version: int | None = None,
        encoding: Encoding | None = None,
        as_torch: bool = False,
        max_request_tokens: int | UseClientDefault | None = USE_CLIENT_DEFAULT,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
        request_id: str | None = None,
    ) -> LogprobsResult:
        """Score ``target_ids`` given ``context_ids`` for each sequence (``POST /v1/logprobs``).

        ``sequences``: dicts ``{"context_ids", "target_ids"}``, ``(context, target)`` pairs or
        ``proto.ScoreSequence``; ids as lists, NumPy arrays or tensors. Returns one
        `TokenScores` per sequence, in order: ``logprobs`` (T,), and ``entropy`` (T,) /
        ``topk_ids`` and ``topk_logprobs`` (T, top_k) when asked for.
        """
        call = self._logprobs_call(
            sequences,
            top_k,
            entropy,
            temperature,
            min_weights_version,
            encoding,
            as_torch,
            max_request_tokens,
        )
        return self._run(call, timeout, request_id)

    def advantages(
        self,
        method: str,
        groups: Sequence[Any],
        *,
        params: Mapping[str, Any] | None = None,
        step: int = 0,
        state: Mapping[str, Any] | None = None,
        seed: int = 0,
        return_details: bool = False,
        min_weights_version: int | None = None,
        encoding: Encoding | None = None,
        as_torch: bool = False,
        max_request_tokens: int | UseClientDefault | None = USE_CLIENT_DEFAULT,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
        request_id: str | None = None,
    ) -> AdvantagesResult:
        """Per-token advantages of ``method`` for ``groups`` (``POST /v1/advantages``).

        ``groups``: request-shaped dicts (docs/api.md) or ``proto.Group``; arrays as lists, NumPy or
        tensors. Send back ``result.state`` as ``state=`` on the run's next call (AntiSD's gate).
        Calls of `SPLITTABLE_METHODS` over ``max_request_tokens`` are split by groups; others
        always go out as one request.
        """
        call = self._advantages_call(
            method,
            groups,
            params,
            step,
            state,
            seed,
            return_details,
            min_weights_version,
            encoding,
            as_torch,
            max_request_tokens,
        )
        return self._run(call, timeout, request_id)

    def hints(
        self,
        groups: Sequence[Any],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        seed: int = 0,
        templates: Mapping[str, Any] | None = None,
        min_weights_version: int | None = None,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
        request_id: str | None = None,
    ) -> HintsResponse:
        """AMR-SD Meta-Reflection (``POST /v1/hints``): a hint or critique per rollout."""
        call = self._hints_call(
            groups, max_tokens, temperature, seed, templates, min_weights_version
        )
        return self._run(call, timeout, request_id)

    def reward(
        self,
        query: Sequence[str],
        *,
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
        request_id: str | None = None,
    ) -> RewardResponse:
        """Verifier rewards in OpenRLHF's remote-reward shape (``POST /get_reward``)."""
        return self._run(self._reward_call(query, prompts, labels), timeout, request_id)

    def load_weights(
        self,
        path: str,
        version: int | None = None,
        *,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
        request_id: str | None = None,
    ) -> WeightsResponse:
        """Load a checkpoint on every replica, one after another (``POST /v1/weights``).

        Needs an admin key (``admin_key=`` or ``TC_ADMIN_KEY``, else ``api_key``). With several
        replicas pass ``version`` so they agree; the answer has the lowest version and the
        longest load time. Stops at the first replica that fails (the ones before it keep the
        new weights).
        """
        return self._run(self._weights_call(path, version), timeout, request_id)

    def push_weights(
        self,
        model_or_state_dict: Any,
        version: int | None = None,
        *,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        cast: bool = True,
        progress: bool | Callable[[int, int], None] | None = None,
        backend: str | None = None,
        master_address: str | None = None,
        master_port: int | None = None,
        timeout: float | None = None,
        preallocate: bool | None = None,
    ) -> WeightsPushResponse:
        """Broadcast weights to every replica over ``torch.distributed`` and swap them in.

        The fast path of `load_weights` (no checkpoint on shared storage): the first call makes
        each replica join a group with this process (this process hosts the rendezvous at
        ``master_address:master_port``); later calls reuse the groups, and a replica that
        restarted joins again. Each replica checks names, shapes and dtypes before anything is
        sent, receives beside its serving weights, then swaps under its weights gate: a response
        never mixes versions, and a push that fails leaves the old weights serving (every group
        is then closed and the next push joins afresh). Needs an admin key.

        Args:
            model_or_state_dict: a ``torch.nn.Module`` (its ``state_dict()``) or a mapping of
                name -> tensor, in the serving model's (Hugging Face) names.
            version: the new ``weights_version`` (must increase); default: highest current + 1.
            bucket_bytes: bytes per packed broadcast (``proto.plan_buckets``).
            cast: send floating tensors in each replica's serving dtype.
            progress: a tqdm bar (True), none (False), a bar for pushes of 256 MiB or more
                (None), or a callable ``(sent_bytes, total_bytes)`` run after every bucket.
            backend: ``"auto"`` (the default: ``"shm"`` when every replica is on this host and
                the tensors are on the CPU, else ``"gloo"``), ``"gloo"`` (CPU tensors over
                TCP), ``"nccl"`` (CUDA tensors) or ``"shm"`` (replicas on this host: the tensors
                are packed once into a /dev/shm segment that every replica maps; no socket).
            master_address: address the replicas connect back to; default: this host's address
                on the route to the first replica.
            master_port: the rendezvous port; default: a free one.
            timeout: seconds bounding the rendezvous and each broadcast (default 60).
            preallocate: with shm, allocate the next push's segment in the background after
                each push (default True): the next push then only copies, for one more copy of
                the weights in /dev/shm between pushes.

        The pusher settings (backend, address, port, timeout, preallocate) are fixed by the
        first call;
        `close` ends the groups.
        """
        pusher = self._weights_pusher(
            backend=backend,
            master_address=master_address,
            master_port=master_port,
            timeout=timeout,
            preallocate=preallocate,
        )
        return pusher.push(
            model_or_state_dict, version, bucket_bytes=bucket_bytes, cast=cast, progress=progress
        )

    def _weights_pusher(self, **kw: Any) -> WeightsPusher:
        with self._pusher_lock:
            if self._pusher is None:

                def post(url: str, path: str, body: dict, seconds: float) -> Any:
                    call = self._transfer_call(path, body, url)
                    return self._run(call, Timeout(seconds, connect=5.0), None)

                self._pusher = WeightsPusher(self.base_urls, post, **self._pusher_kw(kw))
            return self._pusher


# ---- async --------------------------------------------------------------------------------


class AsyncTeacherClient(_Api):
    """Asynchronous twin of `TeacherClient` (same arguments, same methods, awaited)."""

    def __init__(
        self,
        base_url: str | Sequence[str] | None = None,
        *,
        http_transport: httpx.AsyncBaseTransport | None = None,
        **kw: Any,
    ):
        super().__init__(base_url, **kw)
        self._transport = AsyncHTTPTransport(
            self.base_urls, http_transport=http_transport, **self._transport_kw
        )
        self._pusher: WeightsPusher | None = None

    async def _send(
        self, call: _Call, body: Any, replica: str | None, timeout: Timeout, rid: str
    ) -> Any:
        response = await self._transport.request(
            call.method,
            call.path,
            body=body,
            timeout=timeout,
            request_id=rid,
            headers=self._headers(call.admin),
            idempotent=call.idempotent,
            replica=replica,
            retries=call.retries,
        )
        return self._json(response, rid)

    async def _run(
        self, call: _Call, timeout: TimeoutTypes | UseClientDefault, request_id: str | None
    ) -> Any:
        tmo = to_timeout(timeout, self.timeout)
        rid = request_id or new_request_id()
        replicas = call.replicas or [None] * len(call.bodies)
        n = len(call.bodies)
        ids = [rid] if n == 1 else [f"{rid}.{i}" for i in range(n)]
        if n == 1 or call.sequential or self.max_concurrency == 1:
            payloads = [
                await self._send(call, b, r, tmo, i) for b, r, i in zip(call.bodies, replicas, ids)
            ]
        else:
            gate = asyncio.Semaphore(self.max_concurrency)

            async def one(b: Any, r: str | None, i: str) -> Any:
                async with gate:
                    return await self._send(call, b, r, tmo, i)

            tasks = [
                asyncio.ensure_future(one(b, r, i)) for b, r, i in zip(call.bodies, replicas, ids)
            ]
            try:
                payloads = await asyncio.gather(*tasks)
            except BaseException:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return self._combine(call, payloads, rid)

    async def aclose(self) -> None:
        """Close every replica's connection pool (and the weight-transfer groups, if any)."""
        if self._pusher is not None:
            self._pusher.close()
        await self._transport.aclose()

    async def __aenter__(self) -> AsyncTeacherClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def healthz(
        self,
        *,
        replica: str | None = None,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
    ) -> HealthResponse:
        """``GET /healthz`` of one replica (the next in rotation by default); never retried."""
        return await self._run(
            self._health_call("/healthz", HealthResponse, replica), timeout, None
        )

    async def readyz(
        self,
        *,
        replica: str | None = None,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
    ) -> ReadyResponse:
        """``GET /readyz`` of one replica; raises `ServiceUnavailableError` while it loads."""
        return await self._run(self._health_call("/readyz", ReadyResponse, replica), timeout, None)

    async def wait_ready(self, timeout: float = 300.0, interval: float = 0.5) -> None:
        """Wait until every replica answers ``/readyz``; re-raise the last error after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        for url in self.base_urls:
            while True:
                try:
                    await self.readyz(replica=url, timeout=Timeout(min(5.0, timeout)))
                    break
                except TokenCreditError:
                    if time.monotonic() + interval > deadline:
                        raise
                    await asyncio.sleep(interval)

    async def model(
        self, *, timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT
    ) -> ModelInfo:
        """``GET /v1/model``."""
        return await self._run(self._model_call(), timeout, None)

    async def tokenize(
        self,
        text: str | None = None,
        *,
        messages: Sequence[Mapping[str, str] | ChatMessage] | None = None,
        add_generation_prompt: bool = True,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
    ) -> list[int]:
        """See `TeacherClient.tokenize`."""
        call = self._tokenize_call(text, messages, add_generation_prompt)
        return await self._run(call, timeout, None)

    async def logprobs(
        self,
        sequences: Sequence[Any],
        *,
        top_k: int = 0,
        entropy: bool = False,
        temperature: float = 1.0,
        min_weights_version: int | None = None,
        encoding: Encoding | None = None,
        as_torch: bool = False,
        max_request_tokens: int | UseClientDefault | None = USE_CLIENT_DEFAULT,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
        request_id: str | None = None,
    ) -> LogprobsResult:
        """See `TeacherClient.logprobs`."""
        call = self._logprobs_call(
            sequences,
            top_k,
            entropy,
            temperature,
            min_weights_version,
            encoding,
            as_torch,
            max_request_tokens,
        )
        return await self._run(call, timeout, request_id)

    async def advantages(
        self,
        method: str,
        groups: Sequence[Any],
        *,
        params: Mapping[str, Any] | None = None,
        step: int = 0,
        state: Mapping[str, Any] | None = None,
        seed: int = 0,
        return_details: bool = False,
        min_weights_version: int | None = None,
        encoding: Encoding | None = None,
        as_torch: bool = False,
        max_request_tokens: int | UseClientDefault | None = USE_CLIENT_DEFAULT,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
        request_id: str | None = None,
    ) -> AdvantagesResult:
        """See `TeacherClient.advantages`."""
        call = self._advantages_call(
            method,
            groups,
            params,
            step,
            state,
            seed,
            return_details,
            min_weights_version,
            encoding,
            as_torch,
            max_request_tokens,
        )
        return await self._run(call, timeout, request_id)

    async def hints(
        self,
        groups: Sequence[Any],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        seed: int = 0,
        templates: Mapping[str, Any] | None = None,
        min_weights_version: int | None = None,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
        request_id: str | None = None,
    ) -> HintsResponse:
        """See `TeacherClient.hints`."""
        call = self._hints_call(
            groups, max_tokens, temperature, seed, templates, min_weights_version
        )
        return await self._run(call, timeout, request_id)

    async def reward(
        self,
        query: Sequence[str],
        *,
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
        request_id: str | None = None,
    ) -> RewardResponse:
        """See `TeacherClient.reward`."""
        return await self._run(self._reward_call(query, prompts, labels), timeout, request_id)

    async def load_weights(
        self,
        path: str,
        version: int | None = None,
        *,
        timeout: TimeoutTypes | UseClientDefault = USE_CLIENT_DEFAULT,
        request_id: str | None = None,
    ) -> WeightsResponse:
        """See `TeacherClient.load_weights`."""
        return await self._run(self._weights_call(path, version), timeout, request_id)

    async def push_weights(
        self,
        model_or_state_dict: Any,
        version: int | None = None,
        *,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
        cast: bool = True,
        progress: bool | Callable[[int, int], None] | None = None,
        backend: str | None = None,
        master_address: str | None = None,
        master_port: int | None = None,
        timeout: float | None = None,
        preallocate: bool | None = None,
    ) -> WeightsPushResponse:
        """See `TeacherClient.push_weights`; the broadcast runs in a worker thread."""
        loop = asyncio.get_running_loop()
        if self._pusher is None:

            def post(url: str, path: str, body: dict, seconds: float) -> Any:
                call = self._transfer_call(path, body, url)
                coro = self._run(call, Timeout(seconds, connect=5.0), None)
                return asyncio.run_coroutine_threadsafe(coro, loop).result()

            kw = {"backend": backend, "master_address": master_address}
            kw |= {"master_port": master_port, "timeout": timeout, "preallocate": preallocate}
            self._pusher = WeightsPusher(self.base_urls, post, **self._pusher_kw(kw))
        return await asyncio.to_thread(
            self._pusher.push,
            model_or_state_dict,
            version,
            bucket_bytes=bucket_bytes,
            cast=cast,
            progress=progress,
        )
