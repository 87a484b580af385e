"""POST /v1/hints: AMR-SD Meta-Reflection."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from proto.base import Version, WireModel
from proto.prompts import PromptTooLarge, check_uses

# Placeholders a reflection template may use (proto/prompts.py REFLECTION_PROMPT and blocks).
REFLECTION_PLACEHOLDERS = (
    "problem",  # the group's problem
    "attempt",  # this rollout's text, <think> blocks removed, right-truncated to fit
    "grade",  # "correct" | "incorrect"
    "peer_block",  # "A verified-correct attempt from a peer: {peer}\n" or ""
    "feedback_block",  # "Feedback: {feedback}\n" or ""
    "peer",  # the peer's text alone ("" without a peer)
    "feedback",  # the rollout's feedback alone ("" without)
    "kind",  # "hint" | "critique"
    "focus",  # "that made it work" | "where it went wrong"
)
# ``{name}`` not glued to a LaTeX command or a previous group (``\frac{a}{b}`` is no placeholder).
_PLACEHOLDER = re.compile(r"(?<![\\A-Za-z}])\{([A-Za-z_][A-Za-z0-9_]*)\}")


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
    """Override the reflection prompt (the user message) for correct (`hint`) or failed
    (`critique`) rollouts. Placeholders: `{problem}`, `{attempt}`, `{grade}`, `{peer_block}`,
    `{feedback_block}`, `{peer}`, `{feedback}`, `{kind}`, `{focus}`, each at most 8 times; other
    braces are kept literally, and text filled in is never filled again. The reference answer is
    never a placeholder. See docs/hints.md."""

    hint: str | None = Field(default=None, min_length=1)
    critique: str | None = Field(default=None, min_length=1)

    @field_validator("hint", "critique")
    @classmethod
    def check_placeholders(cls, value: str | None) -> str | None:
        if value is not None:
            unknown = sorted(
                {n for n in _PLACEHOLDER.findall(value)} - set(REFLECTION_PLACEHOLDERS)
            )
            if unknown:
                raise ValueError(
                    f"unknown placeholder {{{unknown[0]}}}; allowed: "
                    + ", ".join("{" + n + "}" for n in REFLECTION_PLACEHOLDERS)
                )
            try:  # bounded uses: a template cannot multiply the caller's text
                check_uses(value, set(REFLECTION_PLACEHOLDERS))
            except PromptTooLarge as exc:
                raise ValueError(str(exc)) from None
        return value


class HintsRequest(WireModel):
    groups: list[HintGroup] = Field(min_length=1)
    max_tokens: int = Field(default=256, ge=1, le=4096)
    temperature: float = Field(default=0.7, ge=0.0, le=10.0)
    seed: int = 0
    templates: ReflectionTemplates | None = None
    min_weights_version: Version | None = None


class Reflection(WireModel):
    kind: Literal["hint", "critique"]
    text: str
    peer_index: int | None = None
    leaked: bool = False
    fallback: bool = False
    reason: str | None = Field(
        default=None,
        description="Why a fallback happened: leaked, no_tag, truncated, empty. `truncated` with "
        "`fallback: false`: an over-long reflection cut at its last sentence boundary.",
    )


class GroupReflections(WireModel):
    reflections: list[Reflection]


class HintsResponse(WireModel):
    weights_version: int
    groups: list[GroupReflections]
