"""POST /v1/logprobs: teacher (or student) scoring of given tokens.

Candidate scoring (``candidate_ids``, docs/protocols.md): at target position j the caller names C
distinct ids ``c_1..c_C`` (e.g. the student's own top-k there) and gets the teacher's exact
``log p(c_i)`` and the tail ``log(1 - sum_i p(c_i))``, the mass outside the set, so a top-k
divergence over ``{c_1..c_C, tail}`` is exact, as a top-k list of the teacher's own cannot make it
for the student's ids.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import (
    AfterValidator,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from proto.arrays import (
    Encoding,
    FloatArrayOut,
    FloatMatrixOut,
    IdArray,
    IdMatrixOut,
    PackedArray,
)
from proto.base import Version, WireModel

# Lower bound of ``temperature``: logits / 1e-300 overflow to infinity and every log-prob is NaN.
MIN_TEMPERATURE = 1e-4


def _to_id_matrix(value: list[list[int]] | PackedArray) -> np.ndarray:
    """A (rows, C) int64 array from nested JSON lists or a packed int32 array of shape [rows, C]."""
    if isinstance(value, PackedArray):
        if value.dtype != "int32":
            raise ValueError(f"token ids must be packed as int32, got {value.dtype}")
        if len(value.shape) != 2:
            raise ValueError(f"expected a 2-D array [positions, candidates], got {value.shape}")
        return value.to_numpy().astype(np.int64)
    widths = {len(row) for row in value}
    if len(widths) > 1:
        raise ValueError("every position needs the same number of candidate ids")
    try:
        return np.asarray(value, dtype=np.int64).reshape(len(value), widths.pop() if widths else 0)
    except OverflowError:
        raise ValueError("integers must lie in the signed 64-bit range") from None


IdMatrix = Annotated[
    Annotated[
        Annotated[list[list[int]], Tag("list")] | Annotated[PackedArray, Tag("packed")],
        Discriminator(lambda v: "packed" if isinstance(v, dict | PackedArray) else "list"),
    ],
    AfterValidator(_to_id_matrix),
    PlainSerializer(lambda a: np.asarray(a).tolist(), return_type=list[list[int]]),
]


class ScoreSequence(WireModel):
    context_ids: IdArray = Field(
        description="At least one token; everything the targets are conditioned on."
    )
    target_ids: IdArray = Field(
        description="Zero or more tokens to score; target_ids[j] is scored given all before it."
    )

    candidate_ids: IdMatrix | None = Field(
        default=None,
        description="Optional [len(target_ids), C] ids to score at each target position (C >= 1 "
        "distinct ids per row); answers candidate_logprobs and candidate_tail.",
    )

    @field_validator("context_ids")
    @classmethod
    def check_context_nonempty(cls, ids):
        if len(ids) == 0:
            raise ValueError("context_ids needs at least one token")
        return ids

    @model_validator(mode="after")
    def check_candidates(self):
        cand = self.candidate_ids
        if cand is None:
            return self
        problem = None
        if cand.shape[0] != len(self.target_ids):
            problem = (
                f"candidate_ids has {cand.shape[0]} rows; it needs one per target token "
                f"({len(self.target_ids)})"
            )
        elif cand.shape[0] and cand.shape[1] == 0:
            problem = "candidate_ids needs at least one id per position"
        elif cand.size:
            repeats = (np.diff(np.sort(cand, axis=1), axis=1) == 0).any(1)  # (L,)
            if repeats.any():
                row = int(np.nonzero(repeats)[0][0])
                problem = f"candidate_ids[{row}] repeats an id; candidates must be distinct"
        if problem:  # reported at <sequence path>.candidate_ids (server/errors.py)
            raise PydanticCustomError("candidates", problem, {"field": "candidate_ids"})
        return self


class LogprobsRequest(WireModel):
    sequences: list[ScoreSequence] = Field(min_length=1)
    top_k: int = Field(
        default=0, ge=0, description="0..max_top_k most likely ids per target position."
    )
    entropy: bool = Field(
        default=False, description="Return full-vocabulary entropy per target position."
    )
    temperature: float = Field(
        default=1.0,
        ge=MIN_TEMPERATURE,
        le=100.0,
        description="Divides the logits; at least 1e-4 (below it log-probs and entropy overflow).",
    )
    encoding: Encoding = "json"
    min_weights_version: Version | None = None


class SequenceScores(WireModel):
    logprobs: FloatArrayOut
    entropy: FloatArrayOut | None = None
    topk_ids: IdMatrixOut | None = None
    topk_logprobs: FloatMatrixOut | None = None
    candidate_logprobs: FloatMatrixOut | None = Field(
        default=None, description="log p of each candidate id, [len(target_ids), C]."
    )
    candidate_tail: FloatArrayOut | None = Field(
        default=None,
        description="log(1 - sum of the candidates' p) per position: the mass outside the set.",
    )


class Usage(WireModel):
    sequences: int
    target_tokens: int
    processed_tokens: int


class LogprobsResponse(WireModel):
    weights_version: int
    entropy_kind: Literal["exact", "topk_lower_bound"]
    results: list[SequenceScores]
    usage: Usage
