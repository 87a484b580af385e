"""The embedded model's arithmetic task as a TRL dataset and reward function.

Rows carry TRL's conversational ``prompt`` (the same student message the toy loop sends,
`trainer.toy.contexts.student_user`, under the model's chat template) plus the columns the
teacher needs: ``problem``, ``answer`` (the reference answer) and ``solution`` (the worked
reference solution). Problems come from ``Random(TRAIN_SEED_OFFSET + seed)`` in the order the toy
loop draws them, so with ``shuffle_dataset=False`` and 16 prompts per step both trainers see the
same problems at the same step.
"""

from __future__ import annotations

from typing import Any

from datasets import Dataset

from trainer.toy.arith import generate_problems, is_correct
from trainer.toy.contexts import student_user
from trainer.toy.loop import EVAL_SEED, TRAIN_SEED_OFFSET


def arith_dataset(n: int, seed: int = 0, *, held_out: bool = False) -> Dataset:
    """``n`` problems: the training stream of ``seed``, or the held-out set (seed EVAL_SEED)."""
    problems = generate_problems(n, seed=EVAL_SEED if held_out else TRAIN_SEED_OFFSET + seed)
    return Dataset.from_list(
        [
            {
                "prompt": [{"role": "user", "content": student_user(p)}],
                "problem": p.question,
                "answer": p.answer,
                "solution": p.solution,
            }
            for p in problems
        ]
    )


def completion_text(completion: Any) -> str:
    """TRL passes conversational completions as ``[{"role": "assistant", "content": ...}]``."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion)
    return str(completion)


def boxed_reward(completions: list, answer: list[str], **kwargs: Any) -> list[float]:
    """1.0 when the last ``\\boxed{}`` of the completion equals the row's ``answer``, else 0.0
    (`trainer.toy.arith.is_correct`). A TRL reward function: dataset columns arrive as kwargs."""
    return [float(is_correct(completion_text(c), a)) for c, a in zip(completions, answer)]
