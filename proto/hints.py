"""POST /v1/hints: AMR-SD Meta-Reflection."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from proto.base import WireModel


class HintRollout(WireModel):
    text: str
    correct: bool
    feedback: str | None = None


class HintGroup(WireModel):
    problem: str
    reference_answer: str | None = Field(
        default=None,
        description="Used only to check reflections for leaks; never shown to the model.",
    )
    reference_solution: str | None = None
    rollouts: list[HintRollout] = Field(min_length=1)


class ReflectionTemplates(WireModel):
    """Override the reflection prompt; placeholders as in `server/hints.py`'s defaults."""

    hint: str | None = None
    critique: str | None = None


class HintsRequest(WireModel):
    groups: list[HintGroup] = Field(min_length=1)
    max_tokens: int = Field(default=256, ge=1, le=4096)
    temperature: float = Field(default=0.7, ge=0.0, le=10.0)
    seed: int = 0
    templates: ReflectionTemplates | None = None
    min_weights_version: int | None = Field(default=None, ge=0)


class Reflection(WireModel):
    kind: Literal["hint", "critique"]
    text: str
    peer_index: int | None = None
    leaked: bool = False
    fallback: bool = False
    reason: str | None = Field(
        default=None, description="Why a fallback happened: leaked, no_tag, truncated."
    )


class GroupReflections(WireModel):
    reflections: list[Reflection]


class HintsResponse(WireModel):
    weights_version: int
    groups: list[GroupReflections]
