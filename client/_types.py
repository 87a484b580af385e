"""Results of the scoring calls, and the conversions between them and the wire.

Arrays come back as NumPy (``float32`` for log-probs, entropies and advantages, ``int64`` for token
ids) whatever the wire encoding, so ``encoding="json"`` and ``encoding="base64"`` give identical
numbers; ``as_torch=True`` turns them into CPU tensors sharing the same memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel

from proto import AdvantageStats, Reflection, Usage, decode_packed, encode_packed

__all__ = [
    "AdvantagesResult",
    "CreditDetails",
    "Encoding",
    "LogprobsResult",
    "RolloutCredit",
    "TokenScores",
]

Encoding = Literal["base64", "json"]
ArrayLike = Any  # list, NumPy array or torch tensor


# ---- results --------------------------------------------------------------------------------


@dataclass
class TokenScores:
    """Scores of one sequence's target tokens: row j is target token j (docs/api.md, "Alignment")."""

    logprobs: Any  # (T,) float32: log p(target_ids[j] | everything before it)
    entropy: Any = None  # (T,) float32 nats, when entropy=True
    topk_ids: Any = None  # (T, k) int64, most likely first, when top_k > 0
    topk_logprobs: Any = None  # (T, k) float32

    def __len__(self) -> int:
        return len(self.logprobs)


@dataclass
class LogprobsResult:
    """``POST /v1/logprobs`` answer, reassembled in input order when it was sent in chunks."""

    sequences: list[TokenScores]
    # Weights version that scored the call (the oldest one when chunks were answered by
    # replicas at different versions; pin it with min_weights_version).
    weights_version: int
    entropy_kind: Literal["exact", "topk_lower_bound"]
    usage: Usage  # summed over chunks
    chunks: int = 1  # HTTP requests the call was split into

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int) -> TokenScores:
        return self.sequences[i]

    def __iter__(self) -> Iterator[TokenScores]:
        return iter(self.sequences)


@dataclass
class CreditDetails:
    """What went into one rollout's advantages (``return_details=True``)."""

    student_logprobs: Any  # (T,) float32
    teacher_logprobs: Any  # (T,) float32
    signal: Any  # (T,) float32: the method's per-token term (u_t, JS term, Δ_t, ...)
    teacher_context: str | None = None
    peer_index: int | None = None
    masked: bool = False
    reflection: Reflection | None = None  # AMR-SD: the reflection the server wrote
    teacher_entropy: Any = None  # (T,) float32, for methods that use it (AntiSD), else None


@dataclass
class RolloutCredit:
    advantages: Any  # (T,) float32, T = len(response_ids)
    details: CreditDetails | None = None


@dataclass
class AdvantagesResult:
    """``POST /v1/advantages`` answer: ``groups[g][i]`` is rollout i of group g."""

    method: str
    weights_version: int
    state: dict[str, Any] | None  # send it back as `state=` on the run's next call
    groups: list[list[RolloutCredit]]
    stats: AdvantageStats
    chunks: int = 1

    @property
    def advantages(self) -> list[list[Any]]:
        """Per-token advantages as ``[group][rollout] -> (T,)``."""
        return [[r.advantages for r in g] for g in self.groups]

    def flat(self) -> list[Any]:
        """Per-token advantages of every rollout, groups concatenated in order."""
        return [r.advantages for g in self.groups for r in g]


# ---- request side ---------------------------------------------------------------------------


def to_numpy(x: ArrayLike, dtype: Any) -> np.ndarray:
    """A 1-D NumPy array from a list, NumPy array or (any-device) torch tensor."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def encode(x: ArrayLike, kind: Literal["int", "float"], encoding: Encoding) -> list | dict:
    """One request array on the wire: packed (int32 / float32) or a JSON list of the same values."""
    arr = to_numpy(x, np.int64 if kind == "int" else np.float32)
    if encoding == "base64":
        return encode_packed(arr, "int32" if kind == "int" else "float32")
    return arr.tolist()


def sequence_ids(seq: Any) -> tuple[np.ndarray, np.ndarray]:
    """(context_ids, target_ids) of a dict, a (context, target) pair or a ``ScoreSequence``."""
    if isinstance(seq, Mapping):
        unknown = set(seq) - {"context_ids", "target_ids"}
        if unknown:
            raise ValueError(
                f"a sequence has keys context_ids and target_ids; got {sorted(unknown)}"
            )
        ctx, tgt = seq["context_ids"], seq.get("target_ids", ())
    elif isinstance(seq, BaseModel):
        ctx, tgt = seq.context_ids, seq.target_ids
    else:
        ctx, tgt = seq
    return to_numpy(ctx, np.int64).reshape(-1), to_numpy(tgt, np.int64).reshape(-1)


_GROUP_IDS = ("prompt_ids",)
_ROLLOUT_IDS = ("response_ids",)
_ROLLOUT_FLOATS = ("student_logprobs", "teacher_logprobs", "teacher_entropy")


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, BaseModel):
        return {name: getattr(obj, name) for name in type(obj).model_fields}
    if isinstance(obj, Mapping):
        return dict(obj)
    raise TypeError(f"expected a dict or a proto model, got {type(obj).__name__}")


def group_body(group: Any, encoding: Encoding) -> dict[str, Any]:
    """A request group (dict or ``proto.Group``) with its arrays in the wire encoding."""
    g = _as_dict(group)
    for name in _GROUP_IDS:
        if g.get(name) is not None:
            g[name] = encode(g[name], "int", encoding)
    rollouts = []
    for rollout in g.get("rollouts") or []:
        r = _as_dict(rollout)
        for name in _ROLLOUT_IDS:
            if r.get(name) is not None:
                r[name] = encode(r[name], "int", encoding)
        for name in _ROLLOUT_FLOATS:
            if r.get(name) is not None:
                r[name] = encode(r[name], "float", encoding)
        rollouts.append(r)
    g["rollouts"] = rollouts
    return g


def group_tokens(group: Any) -> int:
    """Rough token count of a group's scoring (prompt + response, per rollout) for chunking."""
    g = _as_dict(group)
    prompt = g.get("prompt_ids")
    n_prompt = len(prompt) if prompt is not None else 0
    total = 0
    for r in g.get("rollouts") or []:
        ids = _as_dict(r).get("response_ids")
        total += n_prompt + (len(ids) if ids is not None else 0)  # NumPy ids have no truth value
    return total


def split_by_tokens(sizes: Sequence[int], budget: int | None) -> list[range]:
    """Consecutive index ranges whose sizes sum to at most ``budget`` (an item over the budget
    gets a range of its own). Order is kept, so concatenating the answers restores the input."""
    if budget is None or sum(sizes) <= budget:
        return [range(len(sizes))]
    chunks, start, total = [], 0, 0
    for i, n in enumerate(sizes):
        if i > start and total + n > budget:
            chunks.append(range(start, i))
            start, total = i, 0
        total += n
    chunks.append(range(start, len(sizes)))
    return chunks


# ---- response side --------------------------------------------------------------------------


def decode(value: Any, dtype: Any, shape: tuple[int, ...] | None = None) -> np.ndarray | None:
    """A response array (JSON list or packed) as a writable NumPy array of ``dtype``."""
    if value is None:
        return None
    arr = decode_packed(value) if isinstance(value, dict) else np.asarray(value)
    arr = arr.astype(dtype)  # copies: frombuffer arrays are read-only
    if shape is not None and arr.size == 0:
        arr = arr.reshape(shape)  # an empty JSON list carries no trailing dimension
    return arr


def token_scores(res: Mapping[str, Any], top_k: int) -> TokenScores:
    logprobs = decode(res["logprobs"], np.float32)
    T = len(logprobs)
    return TokenScores(
        logprobs=logprobs,
        entropy=decode(res.get("entropy"), np.float32),
        topk_ids=decode(res.get("topk_ids"), np.int64, (T, top_k)),
        topk_logprobs=decode(res.get("topk_logprobs"), np.float32, (T, top_k)),
    )


def rollout_credit(res: Mapping[str, Any]) -> RolloutCredit:
    details = res.get("details")
    if details is not None:
        details = CreditDetails(
            student_logprobs=decode(details["student_logprobs"], np.float32),
            teacher_logprobs=decode(details["teacher_logprobs"], np.float32),
            signal=decode(details["signal"], np.float32),
            teacher_context=details.get("teacher_context"),
            peer_index=details.get("peer_index"),
            masked=bool(details.get("masked", False)),
            teacher_entropy=decode(details["teacher_entropy"], np.float32)
            if details.get("teacher_entropy") is not None
            else None,
            reflection=parse_model(Reflection, details["reflection"])
            if details.get("reflection") is not None
            else None,
        )
    return RolloutCredit(advantages=decode(res["advantages"], np.float32), details=details)


def parse_model(model: type[BaseModel], data: Any) -> Any:
    """Validate a response body, ignoring top-level fields a newer server may have added."""
    if isinstance(data, dict):
        data = {k: v for k, v in data.items() if k in model.model_fields}
    return model.model_validate(data)


def merge_stats(parts: Sequence[AdvantageStats]) -> AdvantageStats:
    """Stats of a call sent in chunks: counts summed, means weighted by tokens."""
    if len(parts) == 1:
        return parts[0]
    tokens = sum(p.tokens for p in parts)

    def weighted(name: str) -> float | None:
        values = [(getattr(p, name), p.tokens) for p in parts if getattr(p, name) is not None]
        if not values:
            return None
        weight = sum(t for _, t in values)
        return sum(v * t for v, t in values) / weight if weight else values[0][0]

    return AdvantageStats(
        rollouts=sum(p.rollouts for p in parts),
        tokens=tokens,
        gate=parts[-1].gate,
        teacher_entropy=weighted("teacher_entropy"),
        mean_abs_signal=weighted("mean_abs_signal"),
        masked_rollouts=sum(p.masked_rollouts for p in parts),
    )


def to_torch(obj: Any) -> Any:
    """Every NumPy array in a result dataclass (recursively) as a torch tensor, in place."""
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(obj)
    if isinstance(obj, list):
        return [to_torch(x) for x in obj]
    if hasattr(obj, "__dataclass_fields__"):
        for f in fields(obj):
            value = getattr(obj, f.name)
            if isinstance(value, np.ndarray | list) or hasattr(value, "__dataclass_fields__"):
                setattr(obj, f.name, to_torch(value))
    return obj
