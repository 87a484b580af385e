"""POST /v1/advantages: per-token credit for a batch of groups in one call.

1. Flatten the groups' rollouts into a batch (B rollouts, padded to T response tokens).
2. Student log-probs: the caller's, else scored from ``prompt_ids + response_ids``.
3. Teacher log-probs: the caller's, else scored under the method's teacher context
   (``server/contexts.py``), with entropy when the method needs it (AntiSD's gate).
   Student and teacher items go to the engine in one batch, so shared prefixes (a group's
   prompt, a group's teacher context) are computed once.
4. The method's pure torch function (``server/credit``) turns them into advantages.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import pydantic
import torch

from proto import AdvantagesRequest, encode_array
from server.contexts import ContextBuilder, GroupView, MissingField, RolloutView, TeacherContext
from server.credit import CreditInputs, CreditMethod, get_method
from server.engines.base import ScoreItem
from server.errors import ServiceError, json_path
from server.runtime import Runtime
from server.scoring import check_ids, check_length, score_items


def parse_method(request: AdvantagesRequest):
    method = get_method(request.method)
    try:
        params = method.parse_params(request.params)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        field = json_path(["params", *err["loc"]])
        message = (
            f"unknown parameter for {method.id}" if err["type"] == "extra_forbidden" else err["msg"]
        )
        raise ServiceError(422, f"{field}: {message}", field=field) from None
    return method, params


class Batch:
    """The request's rollouts flattened in order, with their paths for error messages."""

    def __init__(self, request: AdvantagesRequest, tokenizer):
        self.groups = [
            GroupView(g.problem, g.reference_answer, g.reference_solution) for g in request.groups
        ]
        self.rollouts, self.raw, self.paths = [], [], []
        for gi, group in enumerate(request.groups):
            for ri, rollout in enumerate(group.rollouts):
                text = rollout.text
                if text is None:
                    text = tokenizer.decode(rollout.response_ids.tolist(), skip_special_tokens=True)
                self.rollouts.append(
                    RolloutView(
                        gi,
                        ri,
                        rollout.reward,
                        len(rollout.response_ids),
                        text,
                        rollout.feedback,
                        rollout.reflection,
                    )
                )
                self.raw.append(rollout)
                self.paths.append(f"groups[{gi}].rollouts[{ri}]")
        self.lengths = [len(r.response_ids) for r in self.raw]


def student_prompt_ids(
    request: AdvantagesRequest, builder: ContextBuilder, gi: int
) -> tuple[int, ...]:
    group = request.groups[gi]
    if group.prompt_ids is not None:
        return tuple(group.prompt_ids.tolist())
    if group.problem:
        return builder.chat_ids(builder.student_message(group.problem))
    raise ServiceError(
        422,
        f"groups[{gi}]: give prompt_ids or problem, or student_logprobs for every rollout",
        field=f"groups[{gi}].prompt_ids",
    )


def padded(rows: list[np.ndarray], T: int) -> torch.Tensor:
    out = torch.zeros((len(rows), T), dtype=torch.float64)
    for b, row in enumerate(rows):
        out[b, : len(row)] = torch.from_numpy(np.asarray(row, dtype=np.float64))
    return out


async def advantages(
    runtime: Runtime, request: AdvantagesRequest, timings: dict[str, float] | None = None
) -> dict[str, Any]:
    """The response body; ``timings`` (if given) receives seconds spent scoring and in the math."""
    timings = {} if timings is None else timings
    engine, _ = runtime.require_engine()
    info = engine.info
    method, params = parse_method(request)
    builder = ContextBuilder(engine.tokenizer, info.max_model_len)
    batch = Batch(request, engine.tokenizer)
    B = len(batch.raw)
    for gi, group in enumerate(request.groups):
        if group.prompt_ids is not None:
            check_ids(group.prompt_ids, info.vocab_size, f"groups[{gi}].prompt_ids")
    for path, rollout in zip(batch.paths, batch.raw):
        check_ids(rollout.response_ids, info.vocab_size, f"{path}.response_ids")

    async with runtime.gate.reading(request.min_weights_version) as version:
        contexts: list[TeacherContext | None] = [None] * B
        student: list[np.ndarray | None] = [r.student_logprobs for r in batch.raw]
        teacher: list[np.ndarray | None] = [r.teacher_logprobs for r in batch.raw]
        entropy: list[np.ndarray | None] = [r.teacher_entropy for r in batch.raw]
        items: list[ScoreItem] = []
        slots: list[tuple[str, int]] = []
        if method.needs_teacher:
            need_teacher = [
                b
                for b in range(B)
                if teacher[b] is None or (method.needs_entropy and entropy[b] is None)
            ]
            if need_teacher:
                try:
                    built = builder.build(
                        method, params, batch.groups, batch.rollouts, request.seed
                    )
                except MissingField as exc:
                    raise ServiceError(422, str(exc), field=exc.field) from None
                for b in need_teacher:
                    contexts[b] = built[b]
                    if built[b].message is None:
                        continue  # no teacher context: the method masks this row
                    check_length(
                        len(built[b].ids) + batch.lengths[b], info, f"{batch.paths[b]}.response_ids"
                    )
                    items.append(
                        ScoreItem(
                            built[b].ids,
                            tuple(batch.raw[b].response_ids.tolist()),
                            entropy=method.needs_entropy,
                        )
                    )
                    slots.append(("teacher", b))
            for b in range(B):
                if student[b] is None:
                    prompt = student_prompt_ids(request, builder, batch.rollouts[b].group)
                    check_length(
                        len(prompt) + batch.lengths[b], info, f"{batch.paths[b]}.response_ids"
                    )
                    items.append(ScoreItem(prompt, tuple(batch.raw[b].response_ids.tolist())))
                    slots.append(("student", b))
        started = time.perf_counter()
        outputs = await score_items(runtime, items)
        timings["score"] = time.perf_counter() - started

    for (role, b), out in zip(slots, outputs):
        if role == "student":
            student[b] = out.logprobs
        else:
            if teacher[b] is None:
                teacher[b] = out.logprobs
            if method.needs_entropy and entropy[b] is None:
                entropy[b] = out.entropy
    context_mask = [c is None or c.message is not None for c in contexts]
    started = time.perf_counter()
    try:
        return _compute(
            runtime,
            request,
            method,
            params,
            batch,
            student,
            teacher,
            entropy,
            contexts,
            context_mask,
            version,
        )
    finally:
        timings["math"] = time.perf_counter() - started


def _compute(
    runtime,
    request,
    method: CreditMethod,
    params,
    batch,
    student,
    teacher,
    entropy,
    contexts,
    context_mask,
    version,
):
    B, lengths = len(batch.raw), batch.lengths
    T = max(lengths, default=0)
    mask_BT = torch.arange(T)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]
    zeros = [np.zeros(n) for n in lengths]
    # Masked rows (no teacher context) carry teacher = student, so u = 0 wherever a method reads it.
    teacher = [t if t is not None else s for t, s in zip(teacher, student)]
    inputs = CreditInputs(
        mask_BT=mask_BT,
        rewards_B=torch.tensor([r.reward for r in batch.raw], dtype=torch.float64),
        group_ids_B=torch.tensor([r.group for r in batch.rollouts], dtype=torch.long),
        student_lp_BT=padded([s if s is not None else z for s, z in zip(student, zeros)], T)
        if method.needs_teacher
        else None,
        teacher_lp_BT=padded([t if t is not None else z for t, z in zip(teacher, zeros)], T)
        if method.needs_teacher
        else None,
        teacher_entropy_BT=padded([e if e is not None else z for e, z in zip(entropy, zeros)], T)
        if method.needs_entropy
        else None,
        context_mask_B=torch.tensor(context_mask, dtype=torch.bool),
        step=request.step,
    )
    try:
        result = method.compute(inputs, params, request.state)
    except (ValueError, KeyError, TypeError) as exc:
        # The only request-dependent failures left here come from a malformed `state`.
        raise ServiceError(422, f"state: {exc}", field="state") from None
    adv_BT, signal_BT = result.advantages_BT.numpy(), result.signal_BT.numpy()
    enc = request.encoding
    groups_out: list[dict] = [{"rollouts": []} for _ in request.groups]
    for b, rollout in enumerate(batch.rollouts):
        n = lengths[b]
        entry: dict[str, Any] = {
            "advantages": encode_array(adv_BT[b, :n].astype(np.float32), enc),
            "details": None,
        }
        if request.return_details:
            ctx = contexts[b]
            entry["details"] = {
                "student_logprobs": encode_array(
                    np.asarray(student[b] if student[b] is not None else zeros[b], np.float32), enc
                ),
                "teacher_logprobs": encode_array(
                    np.asarray(teacher[b] if teacher[b] is not None else zeros[b], np.float32), enc
                ),
                "signal": encode_array(signal_BT[b, :n].astype(np.float32), enc),
                "teacher_context": ctx.message if ctx is not None else None,
                "peer_index": ctx.peer_index if ctx is not None else None,
                "masked": not context_mask[b],
            }
        groups_out[rollout.group]["rollouts"].append(entry)
    tokens = int(mask_BT.sum())
    stats = {
        "rollouts": B,
        "tokens": tokens,
        "gate": result.gate,
        "teacher_entropy": _gate_statistic(inputs, params) if method.needs_entropy else None,
        "mean_abs_signal": float(np.abs(signal_BT[mask_BT.numpy()]).mean()) if tokens else 0.0,
        "masked_rollouts": int(B - sum(context_mask)),
    }
    return {
        "method": method.id,
        "weights_version": version,
        "state": result.state,
        "groups": groups_out,
        "stats": stats,
    }


def _gate_statistic(inputs: CreditInputs, params) -> float | None:
    values = inputs.teacher_entropy_BT[inputs.mask_BT]
    if values.numel() == 0:
        return None
    stat = values.median() if getattr(params, "gate_stat", "median") == "median" else values.mean()
    value = float(stat)
    return value if math.isfinite(value) else None
