"""POST /v1/advantages: per-token credit for a batch of groups in one call.

1. Flatten the groups' rollouts into a batch (B rollouts, padded to T response tokens).
2. The method's peers and context mask (which rollouts have a teacher context at all), in
   both modes: the mask is part of the method, whoever computes the teacher log-probs.
3. Methods that need reflections: the model writes one for every rollout that came without one.
4. Student log-probs: the caller's, else scored from ``prompt_ids + response_ids`` (unless the
   method needs the caller's, e.g. when the served model is its teacher on the same prompt).
5. Teacher log-probs: the caller's, else scored under the method's teacher message
   (``server/contexts.py``), with entropy when the method needs it (an entropy gate).
   Student and teacher items go to the engine in one batch, so shared prefixes (a group's
   prompt, a group's teacher context) are computed once.
6. The method's pure torch function (``server/credit``) turns them into advantages.
Steps 3-5 hold one weights lease, so one response comes from one weights version.
This module names no method: it asks the method (``server.credit.method.CreditMethod``).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydantic
import torch

from proto import AdvantagesRequest, Reflection, encode_array, prompts
from server.contexts import ContextBuilder, ContextError, TeacherContext
from server.credit import (
    CreditInputs,
    CreditMethod,
    CreditParams,
    GroupView,
    RolloutView,
    UnknownMethodError,
    get_method,
)
from server.engines.base import ScoreItem, TeacherEngine
from server.errors import ServiceError, json_path
from server.hints import reflect_rollouts
from server.runtime import Runtime
from server.scoring import check_ids, check_length, score_items


def parse_method(request: AdvantagesRequest) -> tuple[CreditMethod, CreditParams]:
    try:
        method = get_method(request.method)
    except UnknownMethodError as exc:
        raise ServiceError(422, f"method: {exc}", field="method") from None
    try:
        params = method.parse_params(request.params)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        path = json_path(["params", *err["loc"]])
        unknown = err["type"] == "extra_forbidden"
        message = f"unknown parameter for {method.id}" if unknown else err["msg"]
        raise ServiceError(422, f"{path}: {message}", field=path) from None
    return method, params


@dataclass
class Batch:
    """The request's rollouts flattened in order, and what has been learnt about each."""

    groups: list[GroupView]
    rollouts: list[RolloutView]
    raw: list[Any]  # the wire Rollouts
    paths: list[str]  # "groups[g].rollouts[i]", for error messages
    index: dict[tuple[int, int], int]  # (group, rollout) -> batch position
    student: list[np.ndarray | None] = field(default_factory=list)
    teacher: list[np.ndarray | None] = field(default_factory=list)
    entropy: list[np.ndarray | None] = field(default_factory=list)
    contexts: list[TeacherContext | None] = field(default_factory=list)
    reflections: list[Reflection | None] = field(default_factory=list)
    peers: list[int | None] = field(default_factory=list)  # batch index of each rollout's peer
    context_mask: list[bool] = field(default_factory=list)  # False: no teacher context (masked)

    @classmethod
    def from_request(cls, request: AdvantagesRequest, tokenizer) -> Batch:
        groups = [
            GroupView(g.problem, g.reference_answer, g.reference_solution) for g in request.groups
        ]
        batch = cls(groups, [], [], [], {})
        for gi, group in enumerate(request.groups):
            for ri, r in enumerate(group.rollouts):
                text = r.text
                if text is None:
                    text = tokenizer.decode(r.response_ids.tolist(), skip_special_tokens=True)
                batch.index[(gi, ri)] = len(batch.raw)
                batch.rollouts.append(
                    RolloutView(
                        gi, ri, r.reward, len(r.response_ids), text, r.feedback, r.reflection
                    )
                )
                batch.raw.append(r)
                batch.paths.append(f"groups[{gi}].rollouts[{ri}]")
        B = len(batch.raw)
        batch.student = [r.student_logprobs for r in batch.raw]
        batch.teacher = [r.teacher_logprobs for r in batch.raw]
        batch.entropy = [r.teacher_entropy for r in batch.raw]
        batch.contexts = [None] * B
        batch.reflections = [None] * B
        batch.peers = [None] * B
        batch.context_mask = [True] * B
        return batch

    @property
    def lengths(self) -> list[int]:
        return [r.response_len for r in self.rollouts]

    def response(self, b: int) -> tuple[int, ...]:
        return tuple(self.raw[b].response_ids.tolist())


async def advantages(
    runtime: Runtime, request: AdvantagesRequest, timings: dict[str, float] | None = None
) -> dict[str, Any]:
    """The response body; ``timings`` (if given) receives seconds spent scoring and in the math."""
    timings = {} if timings is None else timings
    engine, _ = runtime.require_engine()
    method, params = parse_method(request)
    # Python-level work per rollout (decoding, the credit math) runs in worker threads, which
    # hand the GIL back to the event loop every few ms: /healthz stays responsive on big bodies.
    batch = await asyncio.to_thread(Batch.from_request, request, engine.tokenizer)
    check_request_ids(request, batch, engine.info.vocab_size)
    check_caller_student(method, batch)

    async with runtime.gate.reading(request.min_weights_version) as version:
        await write_missing_reflections(engine, request, method, params, batch, runtime.batcher)
        if method.needs_teacher:
            batch.peers = method.peers(params, batch.rollouts, request.seed)
            batch.context_mask = method.context_mask(params, batch.rollouts, batch.peers)
        items, slots = plan_scoring(request, method, params, batch, engine)
        started = time.perf_counter()
        outputs = await score_items(runtime, items)
        timings["score"] = time.perf_counter() - started

    for (role, b), out in zip(slots, outputs):
        if role == "student":
            batch.student[b] = out.logprobs
        else:
            if batch.teacher[b] is None:
                batch.teacher[b] = out.logprobs
            if method.needs_entropy and batch.entropy[b] is None:
                batch.entropy[b] = out.entropy
    started = time.perf_counter()
    try:
        return await asyncio.to_thread(compute_response, request, method, params, batch, version)
    finally:
        timings["math"] = time.perf_counter() - started


def check_caller_student(method: CreditMethod, batch: Batch) -> None:
    """A method whose student the served model cannot score needs the caller's log-probs."""
    if method.student_from_caller is None:
        return
    for path, student in zip(batch.paths, batch.student):
        if student is None:
            field = f"{path}.student_logprobs"
            raise ServiceError(422, f"{field}: {method.student_from_caller}", field=field)


def check_request_ids(request: AdvantagesRequest, batch: Batch, vocab_size: int) -> None:
    for gi, group in enumerate(request.groups):
        if group.prompt_ids is not None:
            check_ids(group.prompt_ids, vocab_size, f"groups[{gi}].prompt_ids")
    for path, rollout in zip(batch.paths, batch.raw):
        check_ids(rollout.response_ids, vocab_size, f"{path}.response_ids")


async def write_missing_reflections(
    engine: TeacherEngine,
    request: AdvantagesRequest,
    method: CreditMethod,
    params,
    batch: Batch,
    batcher=None,
) -> None:
    """The model writes a hint/critique for every rollout that came without one (methods with
    ``needs_reflections``).

    Correctness is ``reward >= params.success_threshold``; the reference answer only feeds the
    leak guard. A leaked, tag-less or truncated reflection falls back to "" (the method's teacher
    message then decides; AMR-SD uses the student prompt).
    """
    if not method.needs_reflections:
        return
    select = [[r.reflection is None for r in g.rollouts] for g in request.groups]
    if not any(any(row) for row in select):
        return
    groups = []
    for gi, g in enumerate(request.groups):
        if any(select[gi]) and not g.problem:
            raise ServiceError(
                422,
                f"method {method.id} writes reflections from groups[].problem",
                field=f"groups[{gi}].problem",
            )
        views = [batch.rollouts[batch.index[(gi, ri)]] for ri in range(len(g.rollouts))]
        groups.append(
            {
                "problem": g.problem,
                "reference_answer": g.reference_answer,
                "reference_solution": g.reference_solution,
                "rollouts": [
                    {
                        "text": v.text,
                        "correct": v.reward >= params.success_threshold,
                        "feedback": v.feedback,
                    }
                    for v in views
                ],
            }
        )
    written = await reflect_rollouts(
        engine,
        groups,
        max_tokens=params.reflection_max_tokens,
        temperature=params.reflection_temperature,
        seed=request.seed,
        select=select,
        generate=batcher.generate if batcher is not None else None,  # queue (429), cap (413)
    )
    for gi, row in enumerate(written):
        for ri, reflection in enumerate(row):
            if reflection is not None:
                b = batch.index[(gi, ri)]
                batch.reflections[b] = reflection
                batch.rollouts[b].reflection = reflection.text


def plan_scoring(
    request, method: CreditMethod, params, batch: Batch, engine
) -> tuple[list[ScoreItem], list]:
    """The engine items this request still needs: teacher items first, then student items."""
    info = engine.info
    builder = ContextBuilder(engine.tokenizer, info.max_model_len, method.id)
    items: list[ScoreItem] = []
    slots: list[tuple[str, int]] = []
    if not method.needs_teacher:
        return items, slots
    B = len(batch.raw)
    need_teacher = [
        b
        for b in range(B)
        if batch.teacher[b] is None or (method.needs_entropy and batch.entropy[b] is None)
    ]
    if need_teacher:
        try:
            built = builder.build(
                method,
                params,
                batch.groups,
                batch.rollouts,
                batch.peers,
                batch.context_mask,
                need_teacher,
            )
        except ContextError as exc:
            raise ServiceError(422, str(exc), field=exc.field) from None
        for b in need_teacher:
            batch.contexts[b] = built[b]
            if built[b].message is None:
                continue  # no teacher context: the method masks this row
            check_length(
                len(built[b].ids) + batch.lengths[b], info, f"{batch.paths[b]}.response_ids"
            )
            items.append(ScoreItem(built[b].ids, batch.response(b), entropy=method.needs_entropy))
            slots.append(("teacher", b))
    for b in range(B):
        if batch.student[b] is None:
            prompt = student_prompt_ids(request, builder, batch.rollouts[b].group)
            check_length(len(prompt) + batch.lengths[b], info, f"{batch.paths[b]}.response_ids")
            items.append(ScoreItem(prompt, batch.response(b)))
            slots.append(("student", b))
    return items, slots


def student_prompt_ids(
    request: AdvantagesRequest, builder: ContextBuilder, gi: int
) -> tuple[int, ...]:
    group = request.groups[gi]
    if group.prompt_ids is not None:
        return tuple(group.prompt_ids.tolist())
    if group.problem:
        try:
            message = prompts.student_message(group.problem, max_chars=builder.max_chars)
        except prompts.PromptTooLarge:
            field = f"groups[{gi}].problem"
            raise ServiceError(
                422,
                f"{field}: the student prompt cannot fit the model's max_model_len "
                f"{builder.max_model_len}",
                field=field,
            ) from None
        return builder.chat_ids(message)
    raise ServiceError(
        422,
        f"groups[{gi}]: give prompt_ids or problem, or student_logprobs for every rollout",
        field=f"groups[{gi}].prompt_ids",
    )


def padded(rows: list[np.ndarray | None], lengths: list[int], T: int) -> torch.Tensor:
    """Right-padded (B, T) float64; a missing row is zeros."""
    out = torch.zeros((len(lengths), T), dtype=torch.float64)
    for b, row in enumerate(rows):
        if row is not None:
            out[b, : lengths[b]] = torch.from_numpy(np.asarray(row, dtype=np.float64))
    return out


def compute_response(
    request, method: CreditMethod, params, batch: Batch, version: int
) -> dict[str, Any]:
    lengths = batch.lengths
    B, T = len(lengths), max(lengths, default=0)
    mask_BT = torch.arange(T)[None, :] < torch.tensor(lengths, dtype=torch.long)[:, None]
    context_mask = batch.context_mask
    # Rows without a teacher context carry teacher = student, so u = 0 wherever a method reads it.
    teacher = [t if t is not None else s for t, s in zip(batch.teacher, batch.student)]
    inputs = CreditInputs(
        mask_BT=mask_BT,
        rewards_B=torch.tensor([r.reward for r in batch.raw], dtype=torch.float64),
        group_ids_B=torch.tensor([r.group for r in batch.rollouts], dtype=torch.long),
        student_lp_BT=padded(batch.student, lengths, T) if method.needs_teacher else None,
        teacher_lp_BT=padded(teacher, lengths, T) if method.needs_teacher else None,
        teacher_entropy_BT=padded(batch.entropy, lengths, T) if method.needs_entropy else None,
        context_mask_B=torch.tensor(context_mask, dtype=torch.bool),
        step=request.step,
    )
    try:
        result = method.compute(inputs, params, request.state)
    except (ValueError, KeyError, TypeError) as exc:
        # Inputs were checked above; what can still be wrong here is the caller's `state`.
        raise ServiceError(422, f"state: {exc}", field="state") from None
    adv_BT, signal_BT = result.advantages_BT.numpy(), result.signal_BT.numpy()

    def enc(x: np.ndarray | None, n: int):
        return encode_array(
            np.zeros(n, np.float32) if x is None else np.asarray(x, np.float32), request.encoding
        )

    def enc_scored(x: np.ndarray | None, n: int):
        """Log-probs only where the method computed them (null for rewards-only methods)."""
        return enc(x, n) if method.needs_teacher else None

    groups_out: list[dict] = [{"rollouts": []} for _ in request.groups]
    for b, rollout in enumerate(batch.rollouts):
        n = lengths[b]
        entry: dict[str, Any] = {"advantages": enc(adv_BT[b, :n], n), "details": None}
        if request.return_details:
            ctx, reflection = batch.contexts[b], batch.reflections[b]
            entry["details"] = {
                "student_logprobs": enc_scored(batch.student[b], n),
                "teacher_logprobs": enc_scored(teacher[b], n),
                "teacher_entropy": enc(batch.entropy[b], n) if method.needs_entropy else None,
                "signal": enc(signal_BT[b, :n], n),
                "teacher_context": ctx.message if ctx is not None else None,
                "peer_index": ctx.peer_index if ctx is not None else None,
                "masked": not context_mask[b],
                "reflection": reflection.model_dump() if reflection is not None else None,
            }
        groups_out[rollout.group]["rollouts"].append(entry)
    tokens = int(mask_BT.sum())
    stats = {
        "rollouts": B,
        "tokens": tokens,
        "gate": result.gate,
        "teacher_entropy": finite_or_none(result.teacher_entropy),
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


def finite_or_none(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
