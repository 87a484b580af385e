"""Per-token credit assignment: one module per method, each declaring everything about itself.

``grpo``, ``dr_grpo``, ``opd``, ``opsd``, ``sdpo``, ``rlsd``, ``hsd``, ``antisd``, ``amrsd``: each
has its parameters, formula and paper in the docstring, a pure torch compute function and a
``METHOD`` (``method.CreditMethod``) with its teacher context, peer rule and needs. Shared pieces:
``base`` (inputs, result, masking), ``peers`` (vectorised peer draws), ``registry`` (by id).
Formulas, defaults and sources: docs/algorithms.md.
"""

from server.credit.amrsd import AmrsdParams, amrsd_advantages
from server.credit.antisd import AntisdParams, EntropyGate, antisd_advantages, antisd_token_signal
from server.credit.base import CreditInputs, CreditParams, CreditResult
from server.credit.dr_grpo import DrGrpoParams
from server.credit.grpo import GrpoParams, sequence_advantages
from server.credit.hsd import HsdParams
from server.credit.method import CreditMethod, GroupView, RolloutView
from server.credit.opd import OpdParams, opd_advantages
from server.credit.opsd import OpsdParams, u_advantages
from server.credit.peers import antisd_select_solutions, hsd_select_peers, sdpo_select_demo
from server.credit.registry import (
    METHODS,
    UnknownMethodError,
    compute_credit,
    get_method,
    parse_params,
    register,
    unregister,
)
from server.credit.rlsd import RlsdParams, rlsd_advantages
from server.credit.sdpo import SdpoParams

__all__ = [
    "METHODS",
    "AmrsdParams",
    "AntisdParams",
    "CreditInputs",
    "CreditMethod",
    "CreditParams",
    "CreditResult",
    "DrGrpoParams",
    "EntropyGate",
    "GroupView",
    "GrpoParams",
    "HsdParams",
    "OpdParams",
    "OpsdParams",
    "RlsdParams",
    "RolloutView",
    "SdpoParams",
    "UnknownMethodError",
    "amrsd_advantages",
    "antisd_advantages",
    "antisd_select_solutions",
    "antisd_token_signal",
    "compute_credit",
    "get_method",
    "hsd_select_peers",
    "opd_advantages",
    "parse_params",
    "register",
    "rlsd_advantages",
    "sdpo_select_demo",
    "sequence_advantages",
    "u_advantages",
    "unregister",
]
