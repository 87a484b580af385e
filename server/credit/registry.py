"""The credit methods by id: one module each, its ``METHOD`` registered here.

    >>> import torch
    >>> from server.credit import CreditInputs, compute_credit
    >>> inputs = CreditInputs(mask_BT=torch.ones(2, 3, dtype=torch.bool),
    ...                       rewards_B=torch.tensor([1.0, 0.0]), group_ids_B=torch.tensor([0, 0]))
    >>> compute_credit("dr_grpo", inputs).advantages_BT
    tensor([[ 0.5000,  0.5000,  0.5000],
            [-0.5000, -0.5000, -0.5000]])

Adding a method: a module in ``server/credit`` with its params, compute function and
``METHOD = CreditMethod(...)`` (``method.py``), listed in ``_MODULES`` below, and its test.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from server.credit import amrsd, antisd, dr_grpo, grpo, hsd, opd, opsd, rlsd, sdpo
from server.credit.base import CreditInputs, CreditParams, CreditResult
from server.credit.method import CreditMethod

_MODULES = (grpo, dr_grpo, opd, opsd, sdpo, rlsd, hsd, antisd, amrsd)

METHODS: dict[str, CreditMethod] = {m.METHOD.id: m.METHOD for m in _MODULES}


class UnknownMethodError(ValueError):
    """A method id that is not in METHODS."""


def register(method: CreditMethod) -> CreditMethod:
    """Serve ``method`` under its id (an id already taken is an error)."""
    if method.id in METHODS:
        raise ValueError(f"method {method.id!r} is already registered")
    METHODS[method.id] = method
    return method


def unregister(method_id: str) -> None:
    METHODS.pop(method_id, None)


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
