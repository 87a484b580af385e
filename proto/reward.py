"""POST /get_reward: OpenRLHF's remote reward protocol (``--reward.remote_url``), and the label
convention shared by that route and the OpenRLHF plugin (``trainer/openrlhf``).

OpenRLHF 0.11.2 (``openrlhf/utils/agent.py``, ``SingleTurnAgentExecutor._fetch_rewards_via_http``)
posts, for every rollout, ``{"query": [prompt + response decoded with special tokens],
"prompts": [prompt], "labels": [label]}`` with no auth header, and reads ``rewards``, ``scores``
(``rewards`` when absent; used by dynamic filtering) and ``extra_logs`` (logged per sample), the
shape of its own ``openrlhf/cli/serve_rm.py``. Extra request keys are tolerated here (unlike the
/v1 routes) because the request shape belongs to OpenRLHF, which may add fields between versions.

Labels. The dataset column named by ``--data.label_key`` travels unchanged to this route and into
``Experience.labels``. It is either the reference final answer as a string (``"14"``), or an
object, given as a dict or as a JSON string, with the keys

    ``answer`` (alias ``reference_answer``)       the reference final answer (needed here)
    ``problem`` (alias ``question``)              the problem statement, without chat template
    ``solution`` (alias ``reference_solution``)   a worked reference solution

so one column carries what both the verifier and the teacher contexts of /v1/advantages need.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

_KEYS = {
    "problem": ("problem", "question"),
    "answer": ("answer", "reference_answer"),
    "solution": ("solution", "reference_solution"),
}


class RewardLabel(BaseModel):
    """One label, parsed (see the module docstring). Every field may be absent."""

    model_config = ConfigDict(extra="forbid")

    problem: str | None = None
    answer: str | None = None
    solution: str | None = None

    @classmethod
    def parse(cls, value: Any) -> RewardLabel:
        """``"14"`` -> answer; ``{"answer": 14, "problem": ...}`` or its JSON text -> fields.

        Raises ``ValueError`` for a value of another type (a list, a bool) or an object with a
        non-text field, never guesses.
        """
        if value is None:
            return cls()
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("{"):
                try:
                    value = json.loads(text)
                except RecursionError:  # '{"a":' * 100_000: a 4xx, not a 500
                    raise ValueError("label JSON is nested too deeply") from None
                except ValueError:
                    return cls(answer=value)  # an answer that happens to start with "{"
            else:
                return cls(answer=value or None)
        if isinstance(value, bool):
            raise ValueError(f"a label is a string or an object, got {value!r}")
        if isinstance(value, int | float):
            return cls(answer=str(value))
        if not isinstance(value, Mapping):
            raise ValueError(f"a label is a string or an object, got {type(value).__name__}")
        fields: dict[str, str | None] = {}
        for name, aliases in _KEYS.items():
            found = next((value[k] for k in aliases if value.get(k) is not None), None)
            if isinstance(found, bool) or not isinstance(found, str | int | float | type(None)):
                raise ValueError(f"label field {name!r} must be text, got {type(found).__name__}")
            fields[name] = str(found) if found is not None and str(found) != "" else None
        return cls(**fields)


def _length_mismatch(field: str, got: int, want: int) -> PydanticCustomError:
    return PydanticCustomError(
        "length_mismatch",
        "{field} has {got} entries but query has {want}",
        {"field": field, "got": got, "want": want},
    )


class RewardRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    query: list[str] = Field(
        min_length=1,
        description="Decoded sequences, prompt + response, special tokens included.",
    )
    prompts: list[str] | None = Field(
        default=None, description="The prompt of each query, as OpenRLHF rendered it."
    )
    labels: list[Any] | None = Field(
        default=None,
        description="One label per query: the reference answer, or an object with `answer` "
        "(and optionally `problem`, `solution`), as a dict or JSON text.",
    )

    @model_validator(mode="after")
    def check_lengths(self) -> RewardRequest:
        for name in ("prompts", "labels"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.query):
                raise _length_mismatch(name, len(value), len(self.query))
        return self


class RewardResponse(BaseModel):
    rewards: list[float] = Field(
        description="1.0 when the final answer matches the label, else 0.0."
    )
    scores: list[float] = Field(
        description="Equal to rewards (OpenRLHF's dynamic filtering reads it)."
    )
    extra_logs: dict[str, list[float]] = Field(
        default_factory=dict,
        description="Per-query diagnostics OpenRLHF logs: `answer_found` (1.0 when a final answer "
        "was extracted from the response).",
    )
