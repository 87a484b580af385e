"""What a credit method declares about itself, and the views its teacher context is built from.

A method is one module in ``server/credit`` ending in ``METHOD = CreditMethod(...)``: its id,
paper, formula, typed parameters, pure compute function and, when it has a teacher, everything the
server needs to score one (which peer a rollout is shown, whether it has a context at all, how the
user message is written). ``server/advantages.py`` and ``server/contexts.py`` only ask the method;
neither names one. ``registry.register`` adds a method (the tests register a tenth one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from server.credit.base import CreditInputs, CreditParams, CreditResult


@dataclass
class RolloutView:
    """What context building needs of one rollout (batch order; ``group`` is its group index)."""

    group: int
    index_in_group: int
    reward: float
    response_len: int
    text: str  # decoded response (or the caller's ``text``)
    feedback: str | None
    reflection: str | None


@dataclass
class GroupView:
    problem: str | None
    reference_answer: str | None
    reference_solution: str | None


class ContextTools(Protocol):
    """What a method's ``teacher_message`` may use (implemented by ``server.contexts``)."""

    def require(self, group: GroupView, rollout: RolloutView, name: str) -> str:
        """``group.<name>``, or a 422 naming ``groups[g].<name>`` and the method."""

    def fill(self, rollout: RolloutView, template: str, **values: str) -> str:
        """The single-pass fill, size-bounded; a 422 names the field behind an oversized value."""

    def student_message(self, rollout: RolloutView, problem: str) -> str: ...

    def fit(self, rollout: RolloutView, render: Callable[[str], str], demo: str, limit: int) -> str:
        """``render(demo)`` with ``demo`` right-truncated so that the message has at most
        ``limit`` demo tokens and message + response fit the model."""

    def strip_thinking(self, text: str) -> str: ...


ComputeFn = Callable[[CreditInputs, Any, "dict[str, Any] | None"], CreditResult]
# Per rollout (batch index): the batch index of the rollout shown as its peer, or None.
PeerRule = Callable[[Sequence[float], Sequence[int], int, Any], "list[int | None]"]
# Whether a rollout has a teacher context at all (False: the row is masked, in both modes).
ContextRule = Callable[[Any, RolloutView, "RolloutView | None"], bool]
MessageFn = Callable[[ContextTools, Any, GroupView, RolloutView, "RolloutView | None"], str]


@dataclass(frozen=True)
class CreditMethod:
    id: str
    paper: str
    formula: str  # one line; the module docstring has the derivation
    params_model: type[CreditParams]  # typed defaults (docs/algorithms.md); extra="forbid"
    compute_fn: ComputeFn
    # What the teacher sees, in words; None = no teacher (rewards only).
    teacher_context: str | None = None
    teacher_message: MessageFn | None = None  # the user message the teacher scores under
    select_peers: PeerRule | None = None  # which other rollout a rollout's teacher sees
    has_context: ContextRule | None = None  # None: every rollout has a context
    # Why the caller must send student_logprobs (None: the server may score the student).
    student_from_caller: str | None = None
    needs_entropy: bool = False  # the teacher's per-token entropy (an entropy gate)
    # The policy writes a reflection for every rollout sent without one (from groups[].problem).
    needs_reflections: bool = False

    @property
    def needs_teacher(self) -> bool:
        return self.teacher_context is not None

    def parse_params(self, params: Mapping[str, Any] | CreditParams | None = None) -> CreditParams:
        """Validated params: defaults overridden by name; an unknown name raises ValidationError."""
        if isinstance(params, self.params_model):
            return params
        if isinstance(params, CreditParams):
            params = params.model_dump()
        return self.params_model.model_validate(dict(params or {}))

    def compute(
        self,
        inputs: CreditInputs,
        params: Mapping[str, Any] | CreditParams | None = None,
        state: dict[str, Any] | None = None,
    ) -> CreditResult:
        return self.compute_fn(inputs, self.parse_params(params), state)

    def peers(self, params: Any, rollouts: Sequence[RolloutView], seed: int) -> list[int | None]:
        """Per rollout, the batch index of its peer (None without one or without a rule)."""
        if self.select_peers is None:
            return [None] * len(rollouts)
        return self.select_peers(
            [r.reward for r in rollouts], [r.group for r in rollouts], seed, params
        )

    def context_mask(
        self, params: Any, rollouts: Sequence[RolloutView], peers: Sequence[int | None]
    ) -> list[bool]:
        """Per rollout, whether it has a teacher context: part of the method, so it holds whoever
        computed the teacher log-probs."""
        if self.has_context is None:
            return [True] * len(rollouts)
        return [
            self.has_context(params, r, rollouts[p] if p is not None else None)
            for r, p in zip(rollouts, peers)
        ]
