"""POST /v1/advantages: per-token credit for a batch of groups in one call."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from proto.arrays import Encoding, FloatArray, FloatArrayOut, IdArray
from proto.base import Version, WireModel, find_non_finite
from proto.hints import Reflection

# The methods this release serves (docs/algorithms.md). The wire type is an id, not an enum: the
# server checks it against its registry (422 on `method`), so a new method is one server module.
METHODS = ("grpo", "dr_grpo", "opd", "opsd", "sdpo", "rlsd", "hsd", "antisd", "amrsd")
Method = Annotated[
    str,
    Field(
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="A credit method id: " + ", ".join(METHODS) + " (GET /v1/model lists them).",
        examples=list(METHODS),
    ),
]


def length_mismatch(field: str, got: int, want: int) -> PydanticCustomError:
    """An error the server reports at ``<path of the model>.<field>`` (see server/errors.py)."""
    return PydanticCustomError(
        "length_mismatch",
        "{field} has {got} entries but response_ids has {want}",
        {"field": field, "got": got, "want": want},
    )


class Rollout(WireModel):
    response_ids: IdArray
    reward: float
    student_logprobs: FloatArray | None = None
    teacher_logprobs: FloatArray | None = None
    teacher_entropy: FloatArray | None = None
    text: str | None = Field(
        default=None, description="Decoded response; used in peers' teacher contexts."
    )
    feedback: str | None = None
    reflection: str | None = Field(
        default=None, description="AMR-SD: the rollout's own hint/critique."
    )

    @model_validator(mode="after")
    def check_lengths(self) -> Rollout:
        n = len(self.response_ids)
        for name in ("student_logprobs", "teacher_logprobs", "teacher_entropy"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise length_mismatch(name, len(value), n)
        return self


class Group(WireModel):
    prompt_ids: IdArray | None = Field(
        default=None, description="The student prompt, chat template applied."
    )
    problem: str | None = None
    reference_answer: str | None = None
    reference_solution: str | None = None
    rollouts: list[Rollout] = Field(min_length=1)


class AdvantagesRequest(WireModel):
    method: Method
    params: dict[str, Any] = Field(
        default_factory=dict, description="Overrides of the method's defaults."
    )
    step: int = Field(
        default=0, ge=0, description="The trainer's global optimizer step (annealing)."
    )
    state: dict[str, Any] | None = Field(
        default=None, description="Returned by the previous call of the run."
    )
    seed: int = 0
    encoding: Encoding = "json"
    return_details: bool = False
    min_weights_version: Version | None = None
    groups: list[Group] = Field(min_length=1)

    @field_validator("params", "state")
    @classmethod
    def check_finite(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        found = find_non_finite(value) if value is not None else None
        if found:
            path, problem = found
            raise PydanticCustomError(
                "finite_number",
                "value {problem}",
                {"field": path, "path": path, "problem": problem},
            )
        return value


class RolloutDetails(WireModel):
    student_logprobs: FloatArrayOut | None = Field(
        default=None, description="null for methods without a teacher (grpo, dr_grpo)."
    )
    teacher_logprobs: FloatArrayOut | None = Field(
        default=None, description="null for methods without a teacher (grpo, dr_grpo)."
    )
    teacher_entropy: FloatArrayOut | None = Field(
        default=None, description="The teacher's per-token entropy, for methods that use it."
    )
    signal: FloatArrayOut
    teacher_context: str | None = None
    peer_index: int | None = None
    masked: bool = False
    reflection: Reflection | None = Field(
        default=None, description="AMR-SD: the reflection the server wrote for this rollout."
    )


class RolloutAdvantages(WireModel):
    advantages: FloatArrayOut
    details: RolloutDetails | None = None


class GroupAdvantages(WireModel):
    rollouts: list[RolloutAdvantages]


class AdvantageStats(WireModel):
    rollouts: int
    tokens: int
    gate: int | None = None
    teacher_entropy: float | None = None
    mean_abs_signal: float | None = None
    masked_rollouts: int = 0


class AdvantagesResponse(WireModel):
    method: Method
    weights_version: int
    state: dict[str, Any] | None = None
    groups: list[GroupAdvantages]
    stats: AdvantageStats
