"""vLLM's OpenAI-compatible ``/v1/completions`` and ``/v1/models`` on tokencredit's engine.

A request is turned into the same engine work the native routes do, under the same batcher,
admission and weights gate (docs/protocols.md):

* ``prompt_logprobs=k``: one ``ScoreItem`` per prompt, ``context = prompt[:1]``,
  ``target = prompt[1:]``, top k plus the vocabulary rank of each prompt token. Position 0 has no
  log-prob (``null``), as on vLLM.
* generation (``max_tokens >= 1``): ``n`` ``GenerateItem``s per prompt through ``generate_items``
  (the engine's sampler, the path ``/v1/hints`` takes), then, if ``logprobs`` is set, one
  ``ScoreItem`` per choice for the generated tokens.

Log-probs are vLLM's default ``raw_logprobs``: ``log_softmax(logits)`` at temperature 1 whatever
the request's ``temperature`` (which only changes sampling), clamped at -9999.0 as vLLM writes
them. Token strings are ``tokenizer.decode([id])`` (vLLM's ``convert_ids_list_to_tokens`` for
byte-level tokenizers). Everything vLLM would answer differently from this is refused with a 400
naming the parameter (``check_supported``).
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi.exceptions import RequestValidationError

from proto.openai_compat import CompletionRequest
from server.engines.base import GenerateItem, GenerateOutput, ScoreItem, ScoreOutput
from server.errors import ServiceError, json_path
from server.hints import derive_seed
from server.runtime import Runtime
from server.scoring import score_items

# vLLM writes -inf log-probs as this JSON-safe number (OpenAI's convention).
LOGPROB_FLOOR = -9999.0
SYSTEM_FINGERPRINT = "tokencredit-1.0.0"

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    409: "ConflictError",
    413: "RequestEntityTooLargeError",
    429: "RateLimitError",
    503: "ServiceUnavailableError",
}


class OpenAIError(Exception):
    """A failure answered in vLLM's shape ``{"error": {"message", "type", "param", "code"}}``."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.headers = status, message, param, headers

    @classmethod
    def from_service_error(cls, exc: ServiceError) -> OpenAIError:
        # A 422 of the native routes (ids outside the vocabulary, too long) is vLLM's 400.
        status = 400 if exc.status == 422 else exc.status
        return cls(status, exc.message, exc.field, exc.headers)

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(self.status, "Error"),
                "param": self.param,
                "code": self.status,
            }
        }


def from_validation_error(exc: RequestValidationError) -> OpenAIError:
    """vLLM answers a malformed request with a 400 naming the parameter."""
    errors = exc.errors()
    first = errors[0] if errors else {"loc": (), "msg": "invalid request", "type": "value_error"}
    if first.get("type") == "json_invalid":
        return OpenAIError(400, f"request body is not valid JSON: {first.get('msg')}")
    loc = list(first.get("loc", ()))
    ctx = first.get("ctx") or {}
    if isinstance(ctx.get("field"), str):
        loc.append(ctx["field"])
    path = json_path(loc)
    param = path.split(".")[0].split("[")[0] if path else None  # the top-level parameter
    if first.get("type") == "extra_forbidden":
        return OpenAIError(400, f"unsupported parameter `{path}` (docs/protocols.md)", path)
    if first.get("type") == "unsupported_value":
        return OpenAIError(400, str(first.get("msg")), path)
    return OpenAIError(
        400, f"{param}: {first.get('msg')}" if param else str(first.get("msg")), param
    )


def served_model_name(runtime: Runtime) -> str:
    engine, _ = runtime.require_engine()
    return engine.info.model


# ---- GET /v1/models ------------------------------------------------------------------------------


def models(runtime: Runtime) -> dict[str, Any]:
    engine, _ = runtime.require_engine()
    name, now = engine.info.model, int(time.time())
    permission = {
        "id": f"modelperm-{uuid.uuid4().hex[:16]}",
        "object": "model_permission",
        "created": now,
        "allow_create_engine": False,
        "allow_sampling": True,
        "allow_logprobs": True,
        "allow_search_indices": False,
        "allow_view": True,
        "allow_fine_tuning": False,
        "organization": "*",
        "group": None,
        "is_blocking": False,
    }
    card = {
        "id": name,
        "object": "model",
        "created": now,
        "owned_by": "vllm",
        "root": name,
        "parent": None,
        "max_model_len": engine.info.max_model_len,
        "permission": [permission],
    }
    return {"object": "list", "data": [card]}


# ---- POST /v1/completions ------------------------------------------------------------------------


@dataclass
class _Prompt:
    ids: list[int]
    text: str | None  # the caller's text, for echo; None for token-id prompts


def _prompts(request: CompletionRequest, tokenizer) -> list[_Prompt]:
    prompt = request.prompt
    if isinstance(prompt, str):
        prompt = [prompt]
    if not prompt:
        raise OpenAIError(400, "prompt must not be empty", "prompt")
    if isinstance(prompt[0], int):
        prompt = [prompt]
    out = []
    for p in prompt:
        if isinstance(p, str):
            out.append(_Prompt(tokenizer.encode(p), p))  # add_special_tokens=True, as vLLM
        else:
            out.append(_Prompt(list(p), None))
        if not out[-1].ids:
            raise OpenAIError(400, "The decoder prompt cannot be empty", "prompt")
    return out


def _check(request: CompletionRequest, prompts: list[_Prompt], info, max_tokens: int) -> None:
    if request.model is not None and request.model != info.model:
        raise OpenAIError(
            404,
            f"The model `{request.model}` does not exist. Valid aliases: {info.model}.",
            "model",
        )
    if max_tokens < 1 and not request.echo:
        raise OpenAIError(400, f"max_tokens must be at least 1, got {max_tokens}.", "max_tokens")
    if max_tokens < 0:
        raise OpenAIError(400, f"max_tokens must be at least 0, got {max_tokens}.", "max_tokens")
    if request.temperature is not None and request.temperature < 0:
        raise OpenAIError(
            400, f"temperature must be non-negative, got {request.temperature}.", "temperature"
        )
    for name in ("logprobs", "prompt_logprobs"):
        k = getattr(request, name)
        if k is not None and not 0 <= k <= info.max_top_k:
            raise OpenAIError(
                400,
                f"Requested {name.replace('_', ' ')} of {k}, which is outside the supported "
                f"0..{info.max_top_k} (TC_MAX_TOP_K)",
                name,
            )
    vocab = info.vocab_size
    for tid in request.stop_token_ids or ():
        if not 0 <= tid < vocab:
            raise OpenAIError(400, f"Token id {tid} is out of vocabulary", "stop_token_ids")
    for p in prompts:
        bad = [t for t in p.ids if not 0 <= t < vocab]
        if bad:
            raise OpenAIError(400, f"Token id {bad[0]} is out of vocabulary", "prompt")
        if len(p.ids) + max_tokens > info.max_model_len:
            raise OpenAIError(
                400,
                f"This model's maximum context length is {info.max_model_len} tokens. However, "
                f"your request has {len(p.ids)} input tokens and requests {max_tokens} output "
                "tokens. Please reduce the length of the input prompt or max_tokens.",
                "max_tokens" if len(p.ids) <= info.max_model_len else "prompt",
            )


async def generate_items(runtime: Runtime, items: list[GenerateItem]) -> list[GenerateOutput]:
    """Generation under the server's admission control: the batcher's generation lane, the same
    queue (429 when full) and token cap (413) as ``/v1/hints``."""
    _, batcher = runtime.require_engine()
    return await batcher.generate(items)


def _choice_seed(seed: int | None, prompt: int, j: int) -> int:
    """Choice j of prompt i: the request's seed for the first choice of every prompt (vLLM gives
    every prompt of a request the same seed), distinct derived seeds for the others."""
    if seed is None:
        return secrets.randbits(31)
    return seed if j == 0 else derive_seed(seed, prompt, j, salt="completions")


def _token_strings(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([int(t)]) for t in ids]


def _prompt_logprobs(out: ScoreOutput, prompt_ids: list[int], tokenizer) -> list:
    """vLLM's ``prompt_logprobs``: null, then per position {id: {logprob, rank, decoded_token}},
    the prompt token first, then the top k (the prompt token once if it is among them)."""
    rows: list[dict[str, dict[str, Any]] | None] = [None]
    k = 0 if out.topk_ids is None else out.topk_ids.shape[1]
    for j, tid in enumerate(prompt_ids[1:]):
        entry = {
            str(tid): {
                "logprob": max(float(out.logprobs[j]), LOGPROB_FLOOR),
                "rank": int(out.ranks[j]),
                "decoded_token": tokenizer.decode([tid]),
            }
        }
        for r in range(k):
            other = int(out.topk_ids[j, r])
            if str(other) not in entry:
                entry[str(other)] = {
                    "logprob": max(float(out.topk_logprobs[j, r]), LOGPROB_FLOOR),
                    "rank": r + 1,
                    "decoded_token": tokenizer.decode([other]),
                }
        rows.append(entry)
    return rows


def _completion_logprobs(
    token_ids: list[int], tops: list[dict[str, float] | None], lps: list[float | None], tokenizer
) -> dict[str, Any]:
    """vLLM's ``CompletionLogProbs``: offsets are cumulative lengths of the token strings."""
    tokens = _token_strings(tokenizer, token_ids)
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t)
    return {"text_offset": offsets, "token_logprobs": lps, "tokens": tokens, "top_logprobs": tops}


def _top_dict(token_id: int, lp: float, out: ScoreOutput | None, j: int, k: int, tokenizer):
    """The sampled (or prompt) token first, then the top k, keyed by token string (vLLM keeps k+1
    entries at most; equal strings collapse, the first position kept)."""
    entries = [(token_id, lp)]
    if out is not None and out.topk_ids is not None:
        entries += [(int(out.topk_ids[j, r]), float(out.topk_logprobs[j, r])) for r in range(k)]
    top: dict[str, float] = {}
    seen: set[int] = set()
    for tid, value in entries:
        if tid in seen:
            continue
        seen.add(tid)
        top[tokenizer.decode([tid])] = max(value, LOGPROB_FLOOR)
    return top


async def completions(runtime: Runtime, request: CompletionRequest) -> dict[str, Any]:
    engine, _ = runtime.require_engine()
    info, tokenizer = engine.info, engine.tokenizer
    max_tokens = 16 if request.max_tokens is None else request.max_tokens
    prompts = _prompts(request, tokenizer)
    _check(request, prompts, info, max_tokens)
    temperature = 1.0 if request.temperature is None else request.temperature
    n = request.n
    prompt_k = request.prompt_logprobs
    if prompt_k is None and request.echo:
        prompt_k = request.logprobs  # vLLM: echo with logprobs scores the prompt too
    generate = max_tokens >= 1
    stops = tuple(request.stop_token_ids or ())

    async with runtime.gate.reading(None):
        prompt_scores: list[ScoreOutput | None] = [None] * len(prompts)
        if prompt_k is not None:
            outs = await score_items(
                runtime,
                [
                    ScoreItem(tuple(p.ids[:1]), tuple(p.ids[1:]), top_k=prompt_k, ranks=True)
                    for p in prompts
                ],
            )
            prompt_scores = list(outs)
        gens: list[GenerateOutput] = []
        if generate:
            gens = await generate_items(
                runtime,
                [
                    GenerateItem(
                        prompt_ids=tuple(p.ids),
                        max_tokens=max_tokens,
                        temperature=temperature,
                        seed=_choice_seed(request.seed, i, j),
                        stop_ids=stops,
                    )
                    for i, p in enumerate(prompts)
                    for j in range(n)
                ],
            )
        # vLLM keeps the eos / stop id that ended a generation in token_ids and log-probs.
        choice_ids = [
            list(g.token_ids) + ([g.stop_id] if g.stop_id is not None else []) for g in gens
        ]
        gen_scores: list[ScoreOutput | None] = [None] * len(gens)
        if generate and request.logprobs is not None:
            gen_scores = list(
                await score_items(
                    runtime,
                    [
                        ScoreItem(tuple(prompts[c // n].ids), tuple(ids), top_k=request.logprobs)
                        for c, ids in enumerate(choice_ids)
                    ],
                )
            )

    choices = []
    completion_tokens = 0
    for i, p in enumerate(prompts):
        for j in range(n):
            c = i * n + j
            ids = choice_ids[c] if generate else []
            gen = gens[c] if generate else None
            stopped = gen is not None and gen.finish_reason == "stop"
            # text leaves out the eos / stop id that ended the generation, as vLLM does
            text_ids = ids[:-1] if stopped and ids else ids
            text = tokenizer.decode(text_ids, skip_special_tokens=True)
            stop_reason = None
            if stopped and ids and ids[-1] in stops and ids[-1] != tokenizer.eos_token_id:
                stop_reason = ids[-1]
            logprobs = None
            if request.logprobs is not None:
                k = request.logprobs
                all_ids, tops, lps = [], [], []
                if request.echo:
                    ps = prompt_scores[i]
                    all_ids += p.ids
                    tops.append(None)
                    lps.append(None)
                    for jj, tid in enumerate(p.ids[1:]):
                        lp = float(ps.logprobs[jj])
                        tops.append(_top_dict(tid, lp, ps, jj, k, tokenizer))
                        lps.append(max(lp, LOGPROB_FLOOR))
                gs = gen_scores[c] if generate else None
                for jj, tid in enumerate(ids):
                    lp = float(gs.logprobs[jj])
                    all_ids.append(tid)
                    tops.append(_top_dict(tid, lp, gs, jj, k, tokenizer))
                    lps.append(max(lp, LOGPROB_FLOOR))
                logprobs = _completion_logprobs(all_ids, tops, lps, tokenizer)
            if request.echo:
                text = (p.text if p.text is not None else tokenizer.decode(p.ids)) + text
            completion_tokens += len(ids) if generate else 1  # vLLM counts 1 for echo-only
            choices.append(
                {
                    "index": c,
                    "text": text,
                    "logprobs": logprobs,
                    "finish_reason": gen.finish_reason if gen is not None else "length",
                    "stop_reason": stop_reason,
                    "token_ids": ids if request.return_token_ids else None,
                    "prompt_logprobs": _prompt_logprobs(prompt_scores[i], p.ids, tokenizer)
                    if request.prompt_logprobs is not None
                    or (request.echo and prompt_k is not None)
                    else None,
                    "prompt_token_ids": p.ids if request.return_token_ids else None,
                    "routed_experts": None,
                }
            )
    prompt_tokens = sum(len(p.ids) for p in prompts)
    return {
        "id": f"cmpl-{uuid.uuid4().hex[:16]}",
        "object": "text_completion",
        "created": int(time.time()),
        "model": info.model,
        "choices": choices,
        "service_tier": None,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "completion_tokens": completion_tokens,
            "prompt_tokens_details": None,
            "completion_tokens_details": None,
        },
        "kv_transfer_params": None,
        "ec_transfer_params": None,
        "metrics": None,
    }
