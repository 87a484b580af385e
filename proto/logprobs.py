"""POST /v1/logprobs: teacher (or student) scoring of given tokens."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from proto.arrays import Encoding, FloatArrayOut, FloatMatrixOut, IdArray, IdMatrixOut
from proto.base import WireModel


class ScoreSequence(WireModel):
    context_ids: IdArray = Field(
        description="At least one token; everything the targets are conditioned on."
    )
    target_ids: IdArray = Field(
        description="Zero or more tokens to score; target_ids[j] is scored given all before it."
    )

    @field_validator("context_ids")
    @classmethod
    def check_context_nonempty(cls, ids):
        if len(ids) == 0:
            raise ValueError("context_ids needs at least one token")
        return ids


class LogprobsRequest(WireModel):
    sequences: list[ScoreSequence] = Field(min_length=1)
    top_k: int = Field(
        default=0, ge=0, description="0..max_top_k most likely ids per target position."
    )
    entropy: bool = Field(
        default=False, description="Return full-vocabulary entropy per target position."
    )
    temperature: float = Field(default=1.0, gt=0.0, le=100.0)
    encoding: Encoding = "json"
    min_weights_version: int | None = Field(default=None, ge=0)


class SequenceScores(WireModel):
    logprobs: FloatArrayOut
    entropy: FloatArrayOut | None = None
    topk_ids: IdMatrixOut | None = None
    topk_logprobs: FloatMatrixOut | None = None


class Usage(WireModel):
    sequences: int
    target_tokens: int
    processed_tokens: int


class LogprobsResponse(WireModel):
    weights_version: int
    entropy_kind: Literal["exact", "topk_lower_bound"]
    results: list[SequenceScores]
    usage: Usage
