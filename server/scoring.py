"""POST /v1/logprobs: check a request against the loaded model, score it, encode the answer."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from proto import LogprobsRequest, encode_array
from server.engines.base import EngineInfo, ScoreItem, ScoreOutput
from server.errors import ServiceError
from server.runtime import Runtime


def check_ids(ids: np.ndarray, vocab_size: int, field: str) -> None:
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
        raise ServiceError(
            422, f"{field}: token id {bad} is outside the vocabulary [0, {vocab_size})", field=field
        )


def check_length(n: int, info: EngineInfo, field: str) -> None:
    if n > info.max_model_len:
        raise ServiceError(
            422,
            f"{field}: {n} tokens exceed the model's max_model_len {info.max_model_len}",
            field=field,
        )


def check_options(top_k: int, temperature: float, info: EngineInfo) -> None:
    if top_k > info.max_top_k:
        raise ServiceError(
            422, f"top_k {top_k} is above this server's max_top_k {info.max_top_k}", field="top_k"
        )
    if info.backend == "vllm" and temperature != 1.0:
        raise ServiceError(
            422,
            "the vllm backend returns raw prompt log-probs (temperature 1.0); use temperature 1.0 or TC_BACKEND=hf",
            field="temperature",
        )


def to_engine_items(request: LogprobsRequest, info: EngineInfo) -> list[ScoreItem]:
    check_options(request.top_k, request.temperature, info)
    items = []
    for i, seq in enumerate(request.sequences):
        check_ids(seq.context_ids, info.vocab_size, f"sequences[{i}].context_ids")
        check_ids(seq.target_ids, info.vocab_size, f"sequences[{i}].target_ids")
        check_length(len(seq.context_ids) + len(seq.target_ids), info, f"sequences[{i}]")
        if seq.candidate_ids is not None:
            check_candidates(seq.candidate_ids, info, f"sequences[{i}].candidate_ids")
        items.append(
            ScoreItem(
                context_ids=tuple(seq.context_ids.tolist()),
                target_ids=tuple(seq.target_ids.tolist()),
                top_k=request.top_k,
                entropy=request.entropy,
                temperature=request.temperature,
                candidate_ids=tuple(map(tuple, seq.candidate_ids.tolist()))
                if seq.candidate_ids is not None
                else (),
            )
        )
    return items


def check_candidates(candidate_ids: np.ndarray, info: EngineInfo, field: str) -> None:
    """Candidate scoring needs every candidate's logit: the hf engine has them; vLLM's prompt
    log-probs hold only the top k and the actual token, so it cannot answer exactly (400)."""
    if info.backend != "hf":
        raise ServiceError(
            400,
            f"{field}: candidate scoring needs the hf backend (vLLM returns prompt log-probs of "
            "its own top-k only, so scores of caller-chosen ids would not be exact)",
            type="unsupported_parameter",
            field=field,
        )
    check_ids(candidate_ids.reshape(-1), info.vocab_size, field)


async def score_items(runtime: Runtime, items: list[ScoreItem]) -> list[ScoreOutput]:
    """Score through the batcher; a full queue is a 429 with Retry-After."""
    _, batcher = runtime.require_engine()
    return await batcher.score(items)


def encode_scores(output: ScoreOutput, encoding: str, candidates: bool = False) -> dict[str, Any]:
    def enc(a):
        return None if a is None else encode_array(a, encoding)

    body = {
        "logprobs": enc(output.logprobs),
        "entropy": enc(output.entropy),
        "topk_ids": enc(output.topk_ids),
        "topk_logprobs": enc(output.topk_logprobs),
    }
    if candidates:  # an empty target has no rows, and the engine then returns no arrays
        L = len(output.logprobs)
        cand = output.candidate_logprobs
        tail = output.candidate_tail
        body["candidate_logprobs"] = enc(cand if cand is not None else np.zeros((L, 0), np.float32))
        body["candidate_tail"] = enc(tail if tail is not None else np.zeros(L, np.float32))
    return body


async def logprobs(runtime: Runtime, request: LogprobsRequest) -> dict[str, Any]:
    engine, _ = runtime.require_engine()
    # Per-sequence Python work (id checks, encoding) in a worker thread, which yields the GIL to
    # the event loop every few ms: 10,000 small sequences took about a second on the loop.
    items = await asyncio.to_thread(to_engine_items, request, engine.info)
    async with runtime.gate.reading(request.min_weights_version) as version:
        outputs = await score_items(runtime, items)
    results = await asyncio.to_thread(
        lambda: [
            encode_scores(o, request.encoding, seq.candidate_ids is not None)
            for o, seq in zip(outputs, request.sequences)
        ]
    )
    return {
        "weights_version": version,
        "entropy_kind": engine.info.entropy_kind,
        "results": results,
        "usage": {
            "sequences": len(items),
            "target_tokens": sum(len(it.target_ids) for it in items),
            "processed_tokens": sum(it.num_tokens for it in items),
        },
    }
