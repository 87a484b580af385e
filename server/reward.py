"""POST /get_reward: verifier rewards for OpenRLHF's remote reward protocol (``proto/reward.py``).

For each query: cut the response off the prompt, extract its final answer (the last ``\\boxed{}``,
else an "answer is X" phrase: ``server.answers.extract_final_answer``), and compare it with the
label's answer (``answers_match``: exact rationals for numbers, math_verify for the rest).

    reward_i = 1.0 if answers_match(extract_final_answer(response_i), label_i.answer) else 0.0

A response with no extractable answer scores 0.0 and ``extra_logs["answer_found"] = 0.0``. A
query without a usable label is a 422 naming ``labels[i]``: a run whose ``--data.label_key`` is
missing fails on its first rollout instead of training on all-zero rewards.
"""

from __future__ import annotations

import os
import re
from typing import Any

from starlette.concurrency import run_in_threadpool

from proto.reward import RewardLabel, RewardRequest
from server.answers import answers_match, extract_final_answer
from server.errors import ServiceError

# Chat-template control tokens that OpenRLHF leaves in the query (it decodes with
# skip_special_tokens=False): <|im_end|>, <|endoftext|>, <|eot_id|>, </s>, <eos>. The pattern
# starts with a literal "<|" (a fast C search) and the others are plain replaces: one alternation
# of all of them tried each position of a 4 MB query for seconds, holding the GIL.
SPECIAL_TOKEN = re.compile(r"<\|[^|<>\s]{1,40}\|>")
LITERAL_SPECIAL_TOKENS = ("</s>", "<eos>", "<end_of_turn>")


def response_text(query: str, prompt: str | None) -> str:
    """The response part of ``query`` (prompt + response).

    OpenRLHF decodes prompt + response token ids, so the query normally starts with the prompt
    text exactly. When decoding changed the prompt (tokenizer normalisation), the longest common
    prefix is cut instead; with no prompt the whole query is searched (the *last* answer wins,
    and a prompt's empty ``\\boxed{}`` instruction is never an answer).
    """
    if prompt:
        if query.startswith(prompt):
            query = query[len(prompt) :]
        else:
            query = query[len(os.path.commonprefix([query, prompt])) :]  # noqa: RUF071 - strings
    query = SPECIAL_TOKEN.sub(" ", query)
    for token in LITERAL_SPECIAL_TOKENS:
        query = query.replace(token, " ")
    return query


def label_answer(value: Any, index: int) -> str:
    try:
        answer = RewardLabel.parse(value).answer
    except ValueError as exc:
        raise ServiceError(422, f"labels[{index}]: {exc}", field=f"labels[{index}]") from None
    if not answer:
        raise ServiceError(
            422,
            f"labels[{index}] has no reference answer: give the answer as the label, or an "
            'object with "answer" (OpenRLHF: --data.label_key names that dataset column)',
            field=f"labels[{index}]",
        )
    return answer


def score(query: str, prompt: str | None, gold: str) -> tuple[float, bool]:
    """(reward, answer_found) of one query."""
    pred = extract_final_answer(response_text(query, prompt))
    return (1.0 if pred is not None and answers_match(pred, gold) else 0.0), pred is not None


async def rewards(request: RewardRequest) -> dict[str, Any]:
    if request.labels is None:
        raise ServiceError(
            422,
            "labels is required: the reference answer of each query (OpenRLHF: --data.label_key)",
            field="labels",
        )
    golds = [label_answer(v, i) for i, v in enumerate(request.labels)]
    prompts = request.prompts or [None] * len(request.query)
    # math_verify (sympy) can take a while on odd input: keep it off the event loop.
    results = await run_in_threadpool(
        lambda: [score(q, p, g) for q, p, g in zip(request.query, prompts, golds)]
    )
    values = [r for r, _ in results]
    return {
        "rewards": values,
        "scores": list(values),
        "extra_logs": {"answer_found": [1.0 if found else 0.0 for _, found in results]},
    }
