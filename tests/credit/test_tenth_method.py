"""A new method is one module: this file is that module (a test-only tenth method) plus its test.

``half_u`` shows the teacher the gold answer, gives only failed rollouts a teacher context, and
credits Â = scale·u_t. Registered here, it runs through ``POST /v1/advantages`` of the real app
(in process) with no change to ``server/advantages.py`` or ``server/contexts.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from server.credit import CreditInputs, CreditMethod, CreditParams, CreditResult, register
from server.credit.base import log_ratio
from server.credit.opsd import u_advantages
from server.credit.registry import unregister

PROBLEM = "What is 12+7-5?"
TEMPLATE = "{problem}\n\nThe answer is {answer}. Explain why."


class HalfUParams(CreditParams):
    scale: float = 0.5
    success_threshold: float = 0.5


def compute_half_u(inputs: CreditInputs, params: HalfUParams, state: Any = None) -> CreditResult:
    inputs.check(teacher=True, method="half_u")
    u_BT = log_ratio(inputs, inputs.dtype)
    adv_BT, signal_BT = u_advantages(
        params.scale * u_BT, inputs.bool_mask_BT(), inputs.row_mask_B()
    )
    return CreditResult(adv_BT, signal_BT)


def teacher_message(ctx, params: HalfUParams, group, rollout, peer) -> str:
    problem = ctx.require(group, rollout, "problem")
    answer = ctx.require(group, rollout, "reference_answer")
    return ctx.fill(rollout, TEMPLATE, problem=problem, answer=answer)


HALF_U = CreditMethod(
    id="half_u",
    paper="(test only)",
    formula="Â = scale·u_t on failed rollouts, 0 on successes",
    params_model=HalfUParams,
    compute_fn=compute_half_u,
    teacher_context="problem + the gold answer, failed rollouts only",
    teacher_message=teacher_message,
    has_context=lambda params, rollout, peer: rollout.reward < params.success_threshold,
)


@pytest.fixture
def half_u():
    register(HALF_U)
    yield HALF_U
    unregister(HALF_U.id)


def test_a_registered_method_runs_through_the_advantages_route(app_server, half_u):
    encode = app_server.post("/v1/tokenize", json={"text": "12+7=18. \\boxed{13}"}).json()["ids"]
    rollouts = [
        {"response_ids": encode, "reward": 1.0},
        {"response_ids": encode, "reward": 0.0},
    ]
    body = {
        "method": "half_u",
        "params": {"scale": 2.0},
        "groups": [{"problem": PROBLEM, "reference_answer": "14", "rollouts": rollouts}],
        "return_details": True,
    }
    res = app_server.post("/v1/advantages", json=body)
    assert res.status_code == 200, res.text
    out = res.json()
    assert out["method"] == "half_u" and out["stats"]["masked_rollouts"] == 1
    success, failure = out["groups"][0]["rollouts"]
    assert success["details"]["masked"] and success["advantages"] == [0.0] * len(encode)
    details = failure["details"]
    assert details["teacher_context"] == TEMPLATE.format(problem=PROBLEM, answer="14")
    u = np.asarray(details["teacher_logprobs"]) - np.asarray(details["student_logprobs"])
    np.testing.assert_allclose(failure["advantages"], 2.0 * u, atol=1e-5)
    assert np.abs(u).max() > 0
    # its parameters are validated like any method's
    res = app_server.post("/v1/advantages", json={**body, "params": {"scael": 1}})
    assert res.status_code == 422 and res.json()["error"]["field"] == "params.scael"
    assert "half_u" in app_server.get("/v1/model").json()["methods"]


def test_an_unregistered_method_is_a_422_on_method(app_server):
    body = {"method": "half_u", "groups": [{"rollouts": [{"response_ids": [1], "reward": 1}]}]}
    res = app_server.post("/v1/advantages", json=body)
    assert res.status_code == 422 and res.json()["error"]["field"] == "method"
