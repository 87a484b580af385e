"""POST /get_reward: OpenRLHF's remote reward protocol (`--reward.remote_url`).

OpenRLHF posts ``{"query": [...], "prompts": [...], "labels": [...]}`` and reads ``rewards``,
``scores`` and ``extra_logs``. Extra keys are tolerated here (unlike /v1 routes) because the
request shape belongs to OpenRLHF, which may add fields between versions.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    query: list[str] = Field(description="Full decoded sequences (prompt + response).")
    prompts: list[str] | None = None
    labels: list[Any] | None = Field(default=None, description="Reference answers, one per query.")


class RewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, list[float]] = Field(default_factory=dict)
