"""A TRL generation batch <-> /v1/advantages groups, token by token.

Alignment (TRL 1.16, ``GRPOTrainer._generate_and_score_completions``): ``_generate`` returns
``prompt_ids_list[b]`` and ``completion_ids_list[b]`` unpadded; TRL then left-pads the prompts and
right-pads the completions, so in the ``(B, C)`` tensors (``completion_ids``, ``completion_mask``,
per-token log-probs, advantages) **column j of row b is completion token j**, for
``j < len(completion_ids_list[b])``, and padding after it. Per-token log-probs are
``log_softmax(logits / temperature)`` of the completion tokens, predicted from everything before
them (``_get_per_token_logps_and_entropies``).

So rollout b goes out as ``response_ids = completion_ids_list[b]`` (the ids TRL holds, never
re-tokenized), ``prompt_ids = prompt_ids_list[b]``, ``student_logprobs = logps[b, :len]``; its
advantages come back with ``len`` entries and go to columns ``0..len-1`` of row b; padding columns
get 0 (and are masked out of TRL's loss by ``completion_mask``).

Groups: TRL's ``RepeatSampler`` puts the ``num_generations`` samples of a prompt in consecutive
rows of the generation batch (TRL itself reshapes rewards with ``view(-1, num_generations)``).
Rows of one group must share prompt ids, else the batch is refused.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch


class AlignmentError(ValueError):
    """A batch that cannot be turned into groups without guessing; the message says why."""


def _column(row: Mapping[str, Any], name: str | None) -> str | None:
    if not name or name not in row or row[name] is None:
        return None
    return str(row[name])


def build_groups(
    prompt_ids_B: Sequence[Sequence[int]],
    completion_ids_B: Sequence[Sequence[int]],
    rewards_B: Sequence[float],
    logps_BC: torch.Tensor | None,
    inputs_B: Sequence[Mapping[str, Any]],
    num_generations: int,
    columns: Mapping[str, str | None],
) -> list[dict[str, Any]]:
    """Request groups of ``num_generations`` consecutive rollouts.

    ``columns`` maps ``problem``, ``reference_answer``, ``reference_solution`` to dataset column
    names. ``logps_BC`` (None: let the server compute student log-probs) is sent per response.
    """
    B, G = len(completion_ids_B), num_generations
    if not (len(prompt_ids_B) == len(rewards_B) == len(inputs_B) == B):
        raise AlignmentError(
            f"batch sizes disagree: {len(prompt_ids_B)} prompts, {B} completions, "
            f"{len(rewards_B)} rewards, {len(inputs_B)} dataset rows"
        )
    if G < 1 or B % G:
        raise AlignmentError(f"{B} rollouts do not split into groups of num_generations={G}")
    if logps_BC is not None:
        lp = logps_BC.detach().float().cpu().numpy()
        longest = max((len(c) for c in completion_ids_B), default=0)
        if lp.shape[0] != B or lp.shape[1] < longest:
            raise AlignmentError(
                f"log-probs of shape {tuple(lp.shape)} for {B} completions of up to {longest} tokens"
            )
    groups = []
    for g in range(B // G):
        rows = range(g * G, (g + 1) * G)
        head = list(prompt_ids_B[g * G])
        if not head:
            raise AlignmentError(f"rollout {g * G}: empty prompt; the response needs a context")
        for b in rows:
            if list(prompt_ids_B[b]) != head:
                raise AlignmentError(
                    f"rollouts {g * G}..{g * G + G - 1} should share one prompt "
                    f"(num_generations={G}) but rollout {b} differs: groups would be wrong"
                )
        rollouts = []
        for b in rows:
            reward = float(rewards_B[b])
            if not np.isfinite(reward):
                raise AlignmentError(
                    f"rollout {b}: reward {reward} (every reward function returned None?); "
                    "the teacher needs a number for every rollout"
                )
            ids = [int(t) for t in completion_ids_B[b]]
            rollout: dict[str, Any] = {"response_ids": ids, "reward": reward}
            if logps_BC is not None:
                rollout["student_logprobs"] = lp[b, : len(ids)]
            rollouts.append(rollout)
        row = inputs_B[g * G]
        groups.append(
            {
                "prompt_ids": head,
                "problem": _column(row, columns.get("problem")),
                "reference_answer": _column(row, columns.get("reference_answer")),
                "reference_solution": _column(row, columns.get("reference_solution")),
                "rollouts": rollouts,
            }
        )
    return groups


def advantages_tensor(
    advantages_B: Sequence[Any], completion_ids_B: Sequence[Sequence[int]], C: int
) -> torch.Tensor:
    """``(B, C)`` float32: rollout b's advantages at columns ``0..len-1``, 0 on padding."""
    if len(advantages_B) != len(completion_ids_B):
        raise AlignmentError(f"{len(advantages_B)} answers for {len(completion_ids_B)} rollouts")
    out_BC = torch.zeros((len(advantages_B), C), dtype=torch.float32)
    for b, (adv, ids) in enumerate(zip(advantages_B, completion_ids_B)):
        adv_R = np.asarray(adv, dtype=np.float32)
        if adv_R.shape != (len(ids),) or len(ids) > C:
            raise AlignmentError(
                f"rollout {b}: {adv_R.shape} advantages for {len(ids)} completion tokens "
                f"(padded width {C})"
            )
        out_BC[b, : len(ids)] = torch.from_numpy(adv_R)
    return out_BC
