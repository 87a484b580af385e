"""SGLang's ``POST /generate`` on tokencredit's engine (proto/sglang.py, docs/protocols.md).

``max_new_tokens: 0`` with ``return_logprob`` is pure scoring: one ``ScoreItem`` per prompt
(``context = ids[:1]``, ``target = ids[1:]``) through the batcher, as ``/v1/logprobs`` does.
``max_new_tokens > 0`` generates through ``generate_items`` (the same admission as
``/v1/completions``), then scores the generated tokens if log-probs are asked for.

Log-probs are raw ``log_softmax(logits)`` (temperature 1), what SGLang returns for prompt tokens.
For generated tokens SGLang may scale by the sampling temperature, so log-probs of tokens generated
at a temperature other than 0 or 1 are refused (400 naming ``sampling_params.temperature``) rather
than answered differently.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from proto.sglang import GenerateRequest
from server.engines.base import GenerateItem, ScoreItem, ScoreOutput
from server.openai_compat import OpenAIError, generate_items
from server.runtime import Runtime
from server.scoring import score_items


def _prompts(request: GenerateRequest, tokenizer) -> tuple[list[list[int]], bool]:
    """Token ids per prompt, and whether the request was a batch (then the answer is a list)."""
    if request.input_ids is not None:
        ids = request.input_ids
        batch = bool(ids) and isinstance(ids[0], list)
        prompts = ids if batch else [ids]
    else:
        batch = isinstance(request.text, list)
        texts = request.text if batch else [request.text]
        prompts = [tokenizer.encode(t) for t in texts]
    if not prompts:
        raise OpenAIError(400, "input_ids must hold at least one prompt", "input_ids")
    return [list(p) for p in prompts], batch


def _entry(lp: float | None, tid: int, tokenizer, with_text: bool) -> list:
    return [lp, int(tid), tokenizer.decode([int(tid)]) if with_text else None]


def _top(out: ScoreOutput, j: int, tokenizer, with_text: bool) -> list:
    return [
        _entry(float(out.topk_logprobs[j, r]), int(out.topk_ids[j, r]), tokenizer, with_text)
        for r in range(out.topk_ids.shape[1])
    ]


def _check(request: GenerateRequest, prompts: list[list[int]], info, max_new: int) -> None:
    sp = request.sampling_params
    temperature = 1.0 if sp is None or sp.temperature is None else sp.temperature
    if request.return_logprob and max_new > 0 and temperature not in (0.0, 1.0):
        raise OpenAIError(
            400,
            "log-probs of generated tokens are answered at temperature 0 or 1 only (tokencredit "
            "returns raw log-probs; SGLang may scale them by the temperature)",
            "sampling_params.temperature",
        )
    k = request.top_logprobs_num or 0
    if k > info.max_top_k:
        raise OpenAIError(
            400, f"top_logprobs_num {k} is above this server's {info.max_top_k}", "top_logprobs_num"
        )
    stops = (sp.stop_token_ids if sp else None) or []
    for tid in stops:
        if not 0 <= tid < info.vocab_size:
            raise OpenAIError(400, f"Token id {tid} is out of vocabulary", "sampling_params")
    for i, ids in enumerate(prompts):
        if not ids:
            raise OpenAIError(400, f"prompt {i} is empty", "input_ids")
        bad = [t for t in ids if not 0 <= t < info.vocab_size]
        if bad:
            raise OpenAIError(400, f"Token id {bad[0]} is out of vocabulary", "input_ids")
        if len(ids) + max_new > info.max_model_len:
            raise OpenAIError(
                400,
                f"prompt {i}: {len(ids)} input tokens + max_new_tokens {max_new} exceed the "
                f"model's context length {info.max_model_len}",
                "input_ids",
            )
        start = request.logprob_start_len
        if request.return_logprob and start is not None and start >= len(ids):
            raise OpenAIError(
                400,
                f"logprob_start_len ({start}) is higher than the number of input tokens "
                f"({len(ids)}). Request with a lower logprob_start_len.",
                "logprob_start_len",
            )


async def generate(runtime: Runtime, request: GenerateRequest) -> list[dict] | dict:
    started = time.perf_counter()
    engine, _ = runtime.require_engine()
    info, tokenizer = engine.info, engine.tokenizer
    sp = request.sampling_params
    max_new = 128 if sp is None or sp.max_new_tokens is None else sp.max_new_tokens
    temperature = 1.0 if sp is None or sp.temperature is None else sp.temperature
    stops = tuple((sp.stop_token_ids if sp else None) or ())
    prompts, batch = _prompts(request, tokenizer)
    _check(request, prompts, info, max_new)
    k = request.top_logprobs_num or 0
    want_lp = bool(request.return_logprob)
    with_text = request.return_text_in_logprobs

    async with runtime.gate.reading(None):
        scores: list[ScoreOutput | None] = [None] * len(prompts)
        if want_lp:
            scores = list(
                await score_items(
                    runtime, [ScoreItem(tuple(p[:1]), tuple(p[1:]), top_k=k) for p in prompts]
                )
            )
        gens = []
        if max_new > 0:
            gens = await generate_items(
                runtime,
                [
                    GenerateItem(
                        tuple(p), max_new, temperature, sp.sampling_seed if sp else None, stops
                    )
                    for p in prompts
                ],
            )
        out_ids = [list(g.token_ids) + ([g.stop_id] if g.stop_id is not None else []) for g in gens]
        out_scores: list[ScoreOutput | None] = [None] * len(gens)
        if want_lp and gens:
            out_scores = list(
                await score_items(
                    runtime,
                    [ScoreItem(tuple(p), tuple(o), top_k=k) for p, o in zip(prompts, out_ids)],
                )
            )

    rids = request.rid if isinstance(request.rid, list) else [request.rid] * len(prompts)
    answers = []
    for i, ids in enumerate(prompts):
        gen = gens[i] if gens else None
        output_ids = out_ids[i] if gens else []
        stopped = gen is not None and gen.finish_reason == "stop" and output_ids
        text_ids = output_ids[:-1] if stopped else output_ids
        skip = sp.skip_special_tokens if sp else True
        if gen is None:
            finish = {"type": "length", "length": 0}
        elif stopped:
            finish = {"type": "stop", "matched": output_ids[-1]}
        else:
            finish = {"type": "length", "length": max_new}
        meta: dict[str, Any] = {
            "id": (rids[i] if i < len(rids) else None) or uuid.uuid4().hex,
            "finish_reason": finish,
            "prompt_tokens": len(ids),
            "completion_tokens": len(output_ids),
            "cached_tokens": 0,
        }
        if want_lp:
            start = request.logprob_start_len
            start = len(ids) - 1 if start is None or start == -1 else start
            sc = scores[i]
            meta["input_token_logprobs"] = [
                _entry(None if p == 0 else float(sc.logprobs[p - 1]), ids[p], tokenizer, with_text)
                for p in range(start, len(ids))
            ]
            os_ = out_scores[i] if gens else None
            meta["output_token_logprobs"] = [
                _entry(float(os_.logprobs[j]), t, tokenizer, with_text)
                for j, t in enumerate(output_ids)
            ]
            if k:
                meta["input_top_logprobs"] = [
                    None if p == 0 else _top(sc, p - 1, tokenizer, with_text)
                    for p in range(start, len(ids))
                ]
                meta["output_top_logprobs"] = [
                    _top(os_, j, tokenizer, with_text) for j in range(len(output_ids))
                ]
        meta["e2e_latency"] = time.perf_counter() - started
        answers.append(
            {
                "text": tokenizer.decode(text_ids, skip_special_tokens=skip),
                "output_ids": output_ids,
                "meta_info": meta,
            }
        )
    return answers if batch else answers[0]
