"""A step's ``/v1/advantages`` spread over every replica, batch statistics computed once.

AntiSD (entropy gate over the batch), HSD and OPD (batch mean) cannot be split by groups: each
group's numbers depend on the whole batch. What costs is the teacher's forward passes, and those
depend on one group only, so a step runs in two phases::

    phase 1  shard k of the groups -> replica k:  /v1/advantages, return_details=True
             -> per rollout: teacher_logprobs (+ teacher_entropy for AntiSD, student_logprobs)
    phase 2  every group, every array given     -> one replica:  /v1/advantages
             -> the server scores nothing and runs the method's math once over the batch

Phase 2 is the unsplit call with the teacher's numbers filled in, so its answer equals the
unsplit answer. Two details keep it exact:

- Peer draws (HSD, AntiSD) take one uniform per rollout, in batch order, from ``seed``
  (``server/credit/peers.py``). Shard k is sent behind a *stub group* of as many one-token
  rollouts as the shards before it hold, every array given (nothing to score), so its rollouts
  draw the same uniforms as in the whole batch. Stub rollouts have no successes and are never
  drawn as peers (draws stay inside a group).
- A rollout the method found no teacher context for comes back with teacher = student (and
  entropy 0), which phase 2 reads as u = 0: what the masked row gives in AntiSD and OPD, and in
  HSD unless ``fallback`` is false with ``mix`` > 0, which is therefore never split.

Credit math stays in the server; this module only moves arrays.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Sequence
from typing import Any

from client import AdvantagesResult, DecodeError, TeacherClient, Timeout

# Methods that need the teacher and whose numbers depend on the whole batch.
BATCH_WIDE = frozenset({"antisd", "hsd", "opd"})
PEER_DRAWS = frozenset({"antisd", "hsd"})  # methods whose teacher context draws peers
NEEDS_ENTROPY = frozenset({"antisd"})  # methods whose math reads the teacher's entropy


def splits_exactly(method: str, params: dict[str, Any]) -> bool:
    """Whether the two-phase call equals the unsplit one for this method and its params."""
    # HSD with fallback false and mix > 0: a masked row must be 0 with its mix·A_i, and phase 2
    # cannot see the mask.
    masked_mix = method == "hsd" and params.get("fallback") is False and params.get("mix", 0.0)
    return method in BATCH_WIDE and not masked_mix


def group_tokens(group: dict[str, Any]) -> int:
    """Teacher tokens of a group: its responses (contexts are about the prompt's size)."""
    prompt = len(group["prompt_ids"]) if group.get("prompt_ids") is not None else 0
    return sum(prompt + len(r["response_ids"]) for r in group["rollouts"])


def shard_ranges(sizes: Sequence[int], shards: int) -> list[range]:
    """At most ``shards`` consecutive ranges of whole groups, token sums balanced greedily."""
    total, n = sum(sizes), len(sizes)
    shards = max(1, min(shards, n))
    out, start, acc = [], 0, 0
    for i, size in enumerate(sizes):
        acc += size
        left_groups, left_shards = n - i - 1, shards - len(out) - 1
        if left_shards and (acc >= total * (len(out) + 1) / shards or left_groups == left_shards):
            out.append(range(start, i + 1))
            start = i + 1
    if start < n:
        out.append(range(start, n))
    return out


def stub_group(rollouts: int) -> dict[str, Any]:
    """``rollouts`` one-token rollouts with every array given: consume peer draws, cost nothing."""
    one = [0.0]
    return {
        "prompt_ids": [0],
        "problem": "-",
        "reference_answer": "-",
        "reference_solution": "-",
        "rollouts": [
            {
                "response_ids": [0],
                "reward": 0.0,
                "text": "",
                "student_logprobs": one,
                "teacher_logprobs": one,
                "teacher_entropy": one,
            }
            for _ in range(rollouts)
        ],
    }


def sharded_advantages(
    client: TeacherClient,
    method: str,
    groups: list[dict[str, Any]],
    *,
    shards: int,
    params: dict[str, Any],
    step: int,
    state: dict[str, Any] | None,
    seed: int,
    min_weights_version: int | None,
    timeout: float,
    tokens_per_second: float,
) -> AdvantagesResult:
    """Teacher scoring on ``shards`` replicas at once, then the method's math in one call.

    Read timeouts grow with the work: ``timeout + tokens / tokens_per_second`` for a shard (or
    the whole batch when it is not split), ``timeout`` for the math-only call.
    """
    sizes = [group_tokens(g) for g in groups]
    common = {
        "params": params,
        "step": step,
        "seed": seed,
        "min_weights_version": min_weights_version,
    }
    ranges = shard_ranges(sizes, shards) if splits_exactly(method, params) else []
    if len(ranges) <= 1:
        read = timeout + sum(sizes) / tokens_per_second
        return client.advantages(
            method, groups, state=state, timeout=Timeout(read, connect=5.0), **common
        )

    def phase1(r: range) -> AdvantagesResult:
        before = sum(len(groups[i]["rollouts"]) for i in range(r.start))
        stub = [stub_group(before)] if before and method in PEER_DRAWS else []
        read = timeout + sum(sizes[i] for i in r) / tokens_per_second
        answer = client.advantages(
            method,
            stub + [groups[i] for i in r],
            state=None,
            return_details=True,
            max_request_tokens=None,
            timeout=Timeout(read, connect=5.0),
            **common,
        )
        answer.groups = answer.groups[len(stub) :]
        return answer

    with cf.ThreadPoolExecutor(len(ranges)) as pool:
        parts = list(pool.map(phase1, ranges))

    filled = []
    for r, part in zip(ranges, parts):
        for i, answered in zip(r, part.groups):
            rollouts = []
            for rollout, credit in zip(groups[i]["rollouts"], answered):
                d = credit.details
                extra = {
                    "student_logprobs": d.student_logprobs,
                    "teacher_logprobs": d.teacher_logprobs,
                }
                if method in NEEDS_ENTROPY:
                    if d.teacher_entropy is None:  # phase 2 would score the teacher again
                        raise DecodeError(
                            f"{method}: the pool's /v1/advantages details carry no "
                            "teacher_entropy; update the servers"
                        )
                    extra["teacher_entropy"] = d.teacher_entropy
                rollouts.append({**rollout, **extra})
            filled.append({**groups[i], "rollouts": rollouts})
    result = client.advantages(
        method,
        filled,
        state=state,
        max_request_tokens=None,
        timeout=Timeout(timeout, connect=5.0),
        **common,
    )
    masked = sum(c.details.masked for p in parts for g in p.groups for c in g)
    result.stats = result.stats.model_copy(update={"masked_rollouts": masked})
    result.weights_version = min([result.weights_version, *(p.weights_version for p in parts)])
    result.chunks = len(parts) + 1
    return result
