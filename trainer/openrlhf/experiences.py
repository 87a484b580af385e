"""OpenRLHF experiences <-> /v1/advantages groups, token by token.

Alignment (OpenRLHF 0.11.2; read in ``openrlhf/models/actor.py`` ``Actor.forward`` and
``openrlhf/trainer/ppo_utils/samples_generator.py`` ``_process_response_into_experience``)::

    log_probs_BT1 = log_softmax(logits)[:, :-1] at roll(sequences, -1)  # (B, T-1)
    #   log_probs_BT1[:, i] = log p(sequences[:, i+1] | sequences[:, :i+1])
    action_log_probs_BA = log_probs_BT1[:, -A:] * action_mask_BA        # (B, A)

so **column j of every (B, A) tensor (action_mask, action_log_probs, advantages, returns) is the
token at position T - A + j of ``sequences``**, predicted from the positions before it. 0.11.2
builds ``action_mask = mask[1:]`` over the whole unpadded sequence (A = T - 1: column j is token
j + 1) and right-pads rows when it concatenates samples (``Experience.concat_experiences``);
versions that left-padded prompts had A = response length. ``T - A + j`` covers both.

For one row: the response is the action tokens (``action_mask`` 1, one contiguous span: multi-turn
agent rollouts, whose observations sit between actions, are refused), the prompt is every
attended token before it (``attention_mask`` 1: left padding dropped), and ``student_logprobs``
are ``action_log_probs`` at the same columns. Advantages come back per response token and go to
exactly those columns; every other column is 0 and masked out of OpenRLHF's loss.

Groups: OpenRLHF samples ``n_samples_per_prompt`` consecutive rollouts per prompt, and
``Experience.index`` holds each row's position in that order (``split_rollout_samples``), which
dynamic batching shuffles across micro-batches. Rows are sorted by index and cut into groups of
n; rows of one group must share prompt tokens and label, else the batch is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from proto.reward import RewardLabel


class AlignmentError(ValueError):
    """Experiences that cannot be turned into groups without guessing; the message says why."""


@dataclass
class Row:
    """One rollout of one experience, in token ids (NumPy, int64 / float32)."""

    prompt_ids: np.ndarray  # (P,) attended tokens before the response
    response_ids: np.ndarray  # (R,) the action tokens
    student_logprobs: np.ndarray  # (R,) action_log_probs at the response's columns
    columns: np.ndarray  # (R,) the response's columns j in the (B, A) tensors
    reward: float
    prompt: Any  # Experience.prompts[b] (the rendered prompt text), or None
    label: Any  # Experience.labels[b], or None


def _per_row(values: Any, B: int, name: str) -> list:
    if values is None or len(values) == 0:
        return [None] * B
    if len(values) != B:
        raise AlignmentError(f"experience.{name} has {len(values)} entries for {B} rows")
    return list(values)


def rows_of(experience: Any) -> list[Row]:
    """The rollouts of one (B, T) experience, aligned as the module docstring says."""
    seq_BT = experience.sequences
    attn_BT = experience.attention_mask
    act_BA = experience.action_mask
    lp_BA = experience.action_log_probs
    if seq_BT is None or attn_BT is None or act_BA is None or lp_BA is None:
        raise AlignmentError(
            "experience needs sequences, attention_mask, action_mask and action_log_probs "
            "(run after RemoteExperienceMaker.make_experience)"
        )
    B, T = seq_BT.shape
    A = act_BA.shape[1]
    if lp_BA.shape != act_BA.shape or attn_BT.shape != seq_BT.shape:
        raise AlignmentError(
            f"shapes disagree: sequences {tuple(seq_BT.shape)}, attention_mask "
            f"{tuple(attn_BT.shape)}, action_mask {tuple(act_BA.shape)}, action_log_probs "
            f"{tuple(lp_BA.shape)}"
        )
    offset = T - A  # column j <-> sequence position offset + j
    if offset < 1:
        raise AlignmentError(f"action_mask has {A} columns for {T} tokens; at most T - 1")
    if experience.rewards is None or experience.rewards.numel() != B:
        raise AlignmentError(f"experience.rewards must hold one reward per row ({B})")
    rewards_B = experience.rewards.reshape(B).double().cpu().numpy()
    prompts = _per_row(experience.prompts, B, "prompts")
    labels = _per_row(experience.labels, B, "labels")

    seq = seq_BT.cpu().numpy()
    attn = attn_BT.cpu().numpy().astype(bool)
    act = act_BA.cpu().numpy().astype(bool)
    lp = lp_BA.detach().float().cpu().numpy()
    rows = []
    for b in range(B):
        cols_R = np.flatnonzero(act[b])
        if len(cols_R):
            if cols_R[-1] - cols_R[0] + 1 != len(cols_R):
                raise AlignmentError(
                    f"row {b}: action tokens are not one contiguous span (multi-turn agent "
                    "rollouts are not supported: /v1/advantages scores one response per prompt)"
                )
            pos_R = cols_R + offset  # sequence positions of the response tokens
            if not attn[b, pos_R].all():
                raise AlignmentError(f"row {b}: an action token has attention_mask 0")
            start = int(pos_R[0])
        else:
            start = int(np.flatnonzero(attn[b])[-1]) + 1 if attn[b].any() else 0
        keep_P = attn[b, :start]
        first = int(np.argmax(keep_P)) if keep_P.any() else start
        if not keep_P[first:].all():
            raise AlignmentError(f"row {b}: padding inside the prompt (only left padding is valid)")
        prompt_ids = seq[b, first:start]
        if len(prompt_ids) == 0:
            raise AlignmentError(f"row {b}: empty prompt; the response needs a context")
        rows.append(
            Row(
                prompt_ids=prompt_ids.astype(np.int64),
                response_ids=seq[b, cols_R + offset].astype(np.int64),
                student_logprobs=lp[b, cols_R].astype(np.float32),
                columns=cols_R,
                reward=float(rewards_B[b]),
                prompt=prompts[b],
                label=labels[b],
            )
        )
    return rows


@dataclass
class Batch:
    """A step's experiences as request groups, and where each answer goes back."""

    groups: list[dict[str, Any]]  # /v1/advantages groups, in rollout order
    slots: list[tuple[int, int]]  # (experience, row) of each rollout, groups flattened
    rows: list[list[Row]]  # rows_of(experiences[e]) for every e


def build_batch(
    experiences: list[Any], n_samples_per_prompt: int, send_student: bool = True
) -> Batch:
    """Rows sorted by ``Experience.index``, cut into groups of ``n_samples_per_prompt``.

    Arrays stay NumPy views of the experiences' tensors, which the client packs (base64) without
    a Python object per token. ``send_student=False`` leaves ``student_logprobs`` out: the pool
    scores the student with its own weights (``TOKENCREDIT_STUDENT=server``)."""
    n = n_samples_per_prompt
    if n < 1:
        raise AlignmentError(f"n_samples_per_prompt must be >= 1, got {n}")
    rows = [rows_of(e) for e in experiences]
    entries: list[tuple[int, int, int]] = []  # (index, experience, row)
    for e, (exp, exp_rows) in enumerate(zip(experiences, rows)):
        index = exp.index
        if index is None or len(index) != len(exp_rows):
            raise AlignmentError(
                f"experience {e}: index must list each row's rollout position "
                f"(got {None if index is None else len(index)} for {len(exp_rows)} rows)"
            )
        entries += [(int(i), e, b) for b, i in enumerate(index)]
    entries.sort()
    N = len(entries)
    if [i for i, _, _ in entries] != list(range(N)):
        raise AlignmentError("experience indices are not a permutation of 0..N-1")
    if N % n:
        raise AlignmentError(f"{N} rollouts do not split into groups of n_samples_per_prompt={n}")

    groups, slots = [], []
    for g in range(N // n):
        members = entries[g * n : (g + 1) * n]
        head = rows[members[0][1]][members[0][2]]
        for _, e, b in members[1:]:
            row = rows[e][b]
            if not np.array_equal(row.prompt_ids, head.prompt_ids) or row.label != head.label:
                raise AlignmentError(
                    f"rollouts {g * n}..{g * n + n - 1} should share one prompt and label "
                    f"(n_samples_per_prompt={n}) but differ: groups would be wrong"
                )
        try:
            label = RewardLabel.parse(head.label)
        except ValueError as exc:
            raise AlignmentError(f"group {g}: {exc}") from None
        rollouts = []
        for _, e, b in members:
            rollout = {"response_ids": rows[e][b].response_ids, "reward": rows[e][b].reward}
            if send_student:
                rollout["student_logprobs"] = rows[e][b].student_logprobs
            rollouts.append(rollout)
        groups.append(
            {
                "prompt_ids": head.prompt_ids,
                "problem": label.problem,
                "reference_answer": label.answer,
                "reference_solution": label.solution,
                "rollouts": rollouts,
            }
        )
        slots += [(e, b) for _, e, b in members]
    return Batch(groups=groups, slots=slots, rows=rows)


def write_advantages(experiences: list[Any], batch: Batch, advantages: list[np.ndarray]) -> None:
    """Put each rollout's per-token advantages at its response columns (others 0); ``returns``
    equal to ``advantages``, as OpenRLHF's REINFORCE-family estimators set them."""
    if len(advantages) != len(batch.slots):
        raise AlignmentError(f"{len(advantages)} answers for {len(batch.slots)} rollouts")
    out = [
        torch.zeros(e.action_mask.shape, dtype=torch.float32, device=e.action_mask.device)
        for e in experiences
    ]
    for (e, b), adv_R in zip(batch.slots, advantages):
        cols_R = batch.rows[e][b].columns
        if len(adv_R) != len(cols_R):
            raise AlignmentError(
                f"experience {e} row {b}: {len(adv_R)} advantages for {len(cols_R)} tokens"
            )
        out[e][b, torch.from_numpy(cols_R)] = torch.as_tensor(
            np.asarray(adv_R, dtype=np.float32), device=out[e].device
        )
    for exp, adv_BA in zip(experiences, out):
        exp.advantages = adv_BA
        exp.returns = adv_BA.clone()
