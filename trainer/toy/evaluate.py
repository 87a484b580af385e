"""Held-out evaluation of the toy policy: sampled accuracy, greedy accuracy and pass@k.

On N held-out problems, with k samples each at temperature 1 (``c_n`` of them correct)::

    sampled  = (1/N) Σ_n c_n / k          # the main metric: the policy the loop trains
    pass@k   = (1/N) Σ_n [c_n > 0]        # falls when diversity collapses
    greedy   = (1/N) Σ_n [greedy answer correct]

Sampled accuracy over 500 × 4 draws has a standard error of about 1 point, greedy over 500 about
2 points. The draws come from a fixed seed (``sampling_seed``), so two policies evaluated with the
same seed are compared on the same random numbers (paired); the caller's torch RNG is restored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from trainer.toy.arith import Problem, is_correct

__all__ = ["EvalResult", "evaluate_policy"]

CHUNK_ROWS = 250  # rows per generate call: bounds memory, barely changes speed on CPU


@dataclass
class EvalResult:
    step: int
    sampled: float
    greedy: float
    pass_at_k: float
    k: int


@torch.no_grad()
def correct_counts(
    model, tokenizer, problems: list[Problem], max_new_tokens: int, samples: int, temperature: float
) -> list[int]:
    """Correct answers per problem out of ``samples`` draws (``temperature`` 0: greedy, 1 draw)."""
    from trainer.toy.loop import encode_prompts, generate

    prompt_ids = encode_prompts(tokenizer, problems)
    rows = [(n, ids) for n, ids in enumerate(prompt_ids) for _ in range(samples)]
    counts = [0] * len(problems)
    for i in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[i : i + CHUNK_ROWS]
        ids_BS, _, lengths_B, prompt_len = generate(
            model, tokenizer, [r for _, r in chunk], max_new_tokens, temperature
        )
        new_BT = ids_BS[:, prompt_len:]
        texts = tokenizer.batch_decode(
            [new_BT[b, : int(n)].tolist() for b, n in enumerate(lengths_B)],
            skip_special_tokens=True,
        )
        for (n, _), text in zip(chunk, texts):
            counts[n] += int(is_correct(text, problems[n].answer))
    return counts


def evaluate_policy(
    model,
    tokenizer,
    problems: list[Problem],
    step: int,
    max_new_tokens: int,
    samples: int,
    sampling_seed: int,
) -> EvalResult:
    was_training = model.training
    model.eval()
    rng_state = torch.get_rng_state()
    try:
        greedy = correct_counts(model, tokenizer, problems, max_new_tokens, 1, 0.0)
        torch.manual_seed(sampling_seed)
        sampled = correct_counts(model, tokenizer, problems, max_new_tokens, samples, 1.0)
    finally:
        torch.set_rng_state(rng_state)
        model.train(was_training)
    N = len(problems)
    return EvalResult(
        step=step,
        sampled=sum(sampled) / (N * samples),
        greedy=sum(greedy) / N,
        pass_at_k=sum(c > 0 for c in sampled) / N,
        k=samples,
    )
