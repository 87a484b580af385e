"""The nine credit methods by id: parameters, teacher needs and the compute function.

    >>> import torch
    >>> from server.credit import CreditInputs, compute_credit
    >>> inputs = CreditInputs(mask_BT=torch.ones(2, 3, dtype=torch.bool),
    ...                       rewards_B=torch.tensor([1.0, 0.0]), group_ids_B=torch.tensor([0, 0]))
    >>> compute_credit("dr_grpo", inputs).advantages_BT
    tensor([[ 0.5000,  0.5000,  0.5000],
            [-0.5000, -0.5000, -0.5000]])

``teacher_context`` tells the server which prompt the teacher scores the response under:
"none" (no teacher, or OPD's external teacher on the student's own prompt), "reference_solution"
(OPSD), "sdpo_demo" (first other success + feedback), "answer_only" (RLSD's gold final answer),
"hsd_peer" (a* + a drawn peer, else a*), "antisd_solution" (a verified solution + grading) and
"reflection" (AMR-SD's own hint/critique).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from server.credit.amrsd import AmrsdParams, compute_amrsd
from server.credit.antisd import AntisdParams, compute_antisd
from server.credit.base import CreditInputs, CreditParams, CreditResult
from server.credit.grpo import DrGrpoParams, GrpoParams, compute_dr_grpo, compute_grpo
from server.credit.hsd import HsdParams, compute_hsd
from server.credit.opd import OpdParams, compute_opd
from server.credit.opsd import OpsdParams, compute_opsd
from server.credit.rlsd import RlsdParams, compute_rlsd
from server.credit.sdpo import SdpoParams, compute_sdpo

TeacherContext = Literal[
    "none",
    "reference_solution",
    "sdpo_demo",
    "answer_only",
    "hsd_peer",
    "antisd_solution",
    "reflection",
]
ComputeFn = Callable[[CreditInputs, Any, "dict[str, Any] | None"], CreditResult]


@dataclass(frozen=True)
class CreditMethod:
    id: str
    params_model: type[CreditParams]  # typed defaults of ALGORITHMS.md §1; extra="forbid"
    needs_teacher: bool  # needs student and teacher log-probs
    uses_rewards: bool  # reads rewards_B (GRPO advantage, or success for contexts)
    teacher_context: TeacherContext
    compute_fn: ComputeFn
    stateful: bool = False  # returns a state to send back on the next call (AntiSD gate)
    needs_entropy: bool = False  # needs the teacher's per-token entropy
    paper: str = ""

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


def _method(name: str, params: type[CreditParams], compute: ComputeFn, **kw: Any) -> CreditMethod:
    return CreditMethod(id=name, params_model=params, compute_fn=compute, **kw)


_REWARDS_ONLY = {"needs_teacher": False, "uses_rewards": True, "teacher_context": "none"}

METHODS: dict[str, CreditMethod] = {
    m.id: m
    for m in (
        _method("grpo", GrpoParams, compute_grpo, **_REWARDS_ONLY, paper="arXiv:2402.03300"),
        _method(
            "dr_grpo", DrGrpoParams, compute_dr_grpo, **_REWARDS_ONLY, paper="arXiv:2503.20783"
        ),
        _method(
            "opd",
            OpdParams,
            compute_opd,
            needs_teacher=True,
            uses_rewards=False,
            teacher_context="none",  # an external teacher scores the student's own prompt
            paper="https://thinkingmachines.ai/blog/on-policy-distillation",
        ),
        _method(
            "opsd",
            OpsdParams,
            compute_opsd,
            needs_teacher=True,
            uses_rewards=False,
            teacher_context="reference_solution",
            paper="arXiv:2601.18734",
        ),
        _method(
            "sdpo",
            SdpoParams,
            compute_sdpo,
            needs_teacher=True,
            uses_rewards=True,  # successes become demonstrations
            teacher_context="sdpo_demo",
            paper="arXiv:2601.20802",
        ),
        _method(
            "rlsd",
            RlsdParams,
            compute_rlsd,
            needs_teacher=True,
            uses_rewards=True,
            teacher_context="answer_only",
            paper="arXiv:2604.03128",
        ),
        _method(
            "hsd",
            HsdParams,
            compute_hsd,
            needs_teacher=True,
            uses_rewards=True,  # successes become peers; A_i when mix > 0
            teacher_context="hsd_peer",
            paper="arXiv:2606.15576",
        ),
        _method(
            "antisd",
            AntisdParams,
            compute_antisd,
            needs_teacher=True,
            uses_rewards=True,
            teacher_context="antisd_solution",
            stateful=True,
            needs_entropy=True,
            paper="arXiv:2605.11609",
        ),
        _method(
            "amrsd",
            AmrsdParams,
            compute_amrsd,
            needs_teacher=True,
            uses_rewards=True,
            teacher_context="reflection",
            paper="arXiv:2605.18529",
        ),
    )
}


class UnknownMethodError(ValueError):
    """A method id that is not in METHODS."""


def get_method(name: str) -> CreditMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(
            f"unknown method {name!r}; expected one of {', '.join(METHODS)}"
        ) from None


def parse_params(name: str, params: Mapping[str, Any] | None = None) -> CreditParams:
    """The method's params model with ``params`` overriding its defaults (pydantic ValidationError
    naming the field on an unknown name or a bad value)."""
    return get_method(name).parse_params(params)


def compute_credit(
    name: str,
    inputs: CreditInputs,
    params: Mapping[str, Any] | CreditParams | None = None,
    state: dict[str, Any] | None = None,
) -> CreditResult:
    """Per-token advantages of method ``name`` (see `CreditResult`)."""
    return get_method(name).compute(inputs, params, state)
