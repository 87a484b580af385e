"""Per-token credit assignment: nine advantage methods as pure torch functions, no I/O.

Formulas, defaults and sources: ALGORITHMS.md. One module per method (``grpo``, ``opd``, ``opsd``,
``sdpo``, ``hsd``, ``rlsd``, ``antisd``, ``amrsd``), peer choice for teacher contexts in ``peers``,
trainer-side divergences in ``divergences``, and the registry by method id in ``registry``.
"""

from server.credit.amrsd import AmrsdParams, amrsd_advantages
from server.credit.antisd import AntisdParams, EntropyGate, antisd_advantages, antisd_token_signal
from server.credit.base import CreditInputs, CreditParams, CreditResult
from server.credit.divergences import phi, sdpo_token_loss, topk_with_tail
from server.credit.grpo import DrGrpoParams, GrpoParams, sequence_advantages
from server.credit.hsd import HsdParams
from server.credit.opd import OpdParams, opd_advantages
from server.credit.opsd import OpsdParams, u_advantages
from server.credit.peers import (
    antisd_select_solutions,
    hsd_coverage,
    hsd_select_peers,
    other_successes,
    sdpo_select_demo,
)
from server.credit.registry import (
    METHODS,
    CreditMethod,
    UnknownMethodError,
    compute_credit,
    get_method,
    parse_params,
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
    "GrpoParams",
    "HsdParams",
    "OpdParams",
    "OpsdParams",
    "RlsdParams",
    "SdpoParams",
    "UnknownMethodError",
    "amrsd_advantages",
    "antisd_advantages",
    "antisd_select_solutions",
    "antisd_token_signal",
    "compute_credit",
    "get_method",
    "hsd_coverage",
    "hsd_select_peers",
    "opd_advantages",
    "other_successes",
    "parse_params",
    "phi",
    "rlsd_advantages",
    "sdpo_select_demo",
    "sdpo_token_loss",
    "sequence_advantages",
    "topk_with_tail",
    "u_advantages",
]
