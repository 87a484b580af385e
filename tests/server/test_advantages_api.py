"""/v1/advantages end to end on the real model and a real server.

The oracle for the math is ``server.credit.compute_credit`` (itself tested against the
docs/algorithms.md vectors); these tests check the plumbing: contexts, scoring, alignment, errors.
"""

from __future__ import annotations

import os
import time

import httpx
import numpy as np
import pytest
import torch

from proto import decode_packed
from server.credit import CreditInputs, compute_credit

PROBLEM = "What is 12+7-5?"
BOXED = "Please reason step by step, and put your final answer within \\boxed{}."
SOLUTION = "12+7=19. 19-5=14. \\boxed{14}"
TOL = {"hf": 1e-5, "vllm": 1e-4}  # vLLM's kernels differ from transformers' by ~1e-5
if os.environ.get("TC_TEST_DEVICE", "cpu") != "cpu":
    TOL["hf"] = 1e-4  # GPU kernels vs the CPU reference: ~1.5e-5 seen at |log p| ~ 17 on an H100
# Methods whose teacher and student the server scores itself (opd needs the caller's student).
TEACHER_METHODS = ["opsd", "sdpo", "rlsd", "hsd", "antisd", "amrsd"]


def call(server, method: str, path: str, **kw) -> httpx.Response:
    """One request to a real server (``server``) or to the app in process (``app_server``)."""
    if hasattr(server, "request"):
        return server.request(method, path, **kw)
    return httpx.request(method, server.url + path, timeout=120, **kw)


def post(server, body):
    return call(server, "POST", "/v1/advantages", json=body)


def encode(server, text):
    return call(server, "POST", "/v1/tokenize", json={"text": text}).json()["ids"]


@pytest.fixture(scope="module")
def group(server):
    return make_group(server)


@pytest.fixture(scope="module")
def app_group(app_server):
    return make_group(app_server)


def make_group(server):
    """One group: two correct rollouts, two wrong ones with feedback, one empty response."""
    texts = [
        SOLUTION,
        "12+7=19. 19-5=13. \\boxed{13}",
        "12+7=19. 19-5=14. \\boxed{14}",
        "12+7=18. \\boxed{13}",
    ]
    rewards = [1.0, 0.0, 1.0, 0.0]
    rollouts = [
        {
            "response_ids": encode(server, t),
            "reward": r,
            "text": t,
            "feedback": None if r else "the answer is wrong",
        }
        for t, r in zip(texts, rewards)
    ]
    rollouts.append({"response_ids": [], "reward": 0.0})
    return {
        "problem": PROBLEM,
        "reference_answer": "14",
        "reference_solution": SOLUTION,
        "rollouts": rollouts,
    }


def score(server, context_ids, target_ids):
    body = {"sequences": [{"context_ids": context_ids, "target_ids": target_ids}]}
    return np.asarray(
        httpx.post(server.url + "/v1/logprobs", json=body, timeout=60).json()["results"][0][
            "logprobs"
        ]
    )


@pytest.mark.parametrize("method", TEACHER_METHODS)
def test_teacher_logprobs_equal_logprobs_on_rendered_context(server, group, method):
    body = {"method": method, "groups": [group], "return_details": True, "seed": 3}
    res = post(server, body)
    assert res.status_code == 200, res.text
    out = res.json()
    student_prompt = httpx.post(
        server.url + "/v1/tokenize",
        json={
            "messages": [
                {
                    "role": "user",
                    "content": f"{PROBLEM}\n\nPlease reason step by step, and put your final answer within \\boxed{{}}.",
                }
            ]
        },
    ).json()["ids"]
    for rollout, result in zip(group["rollouts"], out["groups"][0]["rollouts"]):
        details, n = result["details"], len(rollout["response_ids"])
        assert len(result["advantages"]) == n
        assert np.all(np.isfinite(result["advantages"]))
        np.testing.assert_allclose(
            details["student_logprobs"],
            score(server, student_prompt, rollout["response_ids"]) if n else [],
            atol=TOL[server.backend],
        )
        if details["masked"]:
            assert np.all(np.asarray(result["advantages"]) == 0.0) or method in (
                "rlsd",
                "antisd",
                "amrsd",
            )
            continue
        context_ids = httpx.post(
            server.url + "/v1/tokenize",
            json={"messages": [{"role": "user", "content": details["teacher_context"]}]},
        ).json()["ids"]
        expected = score(server, context_ids, rollout["response_ids"]) if n else []
        np.testing.assert_allclose(details["teacher_logprobs"], expected, atol=TOL[server.backend])


def test_advantages_match_credit_math(server, group):
    """Server advantages == compute_credit on the server's own student/teacher numbers."""
    res = post(
        server,
        {
            "method": "hsd",
            "params": {"mix": 0.5},
            "groups": [group],
            "return_details": True,
            "step": 3,
        },
    )
    out = res.json()["groups"][0]["rollouts"]
    lengths = [len(r["response_ids"]) for r in group["rollouts"]]
    T = max(lengths)
    s = torch.zeros(len(out), T, dtype=torch.float64)
    t = torch.zeros_like(s)
    for b, r in enumerate(out):
        s[b, : lengths[b]] = torch.tensor(r["details"]["student_logprobs"], dtype=torch.float64)
        t[b, : lengths[b]] = torch.tensor(r["details"]["teacher_logprobs"], dtype=torch.float64)
    inputs = CreditInputs(
        mask_BT=torch.arange(T)[None] < torch.tensor(lengths)[:, None],
        rewards_B=torch.tensor([r["reward"] for r in group["rollouts"]], dtype=torch.float64),
        group_ids_B=torch.zeros(len(out), dtype=torch.long),
        student_lp_BT=s,
        teacher_lp_BT=t,
        context_mask_B=torch.tensor([not r["details"]["masked"] for r in out]),
        step=3,
    )
    expected = compute_credit("hsd", inputs, {"mix": 0.5}).advantages_BT
    for b, r in enumerate(out):
        np.testing.assert_allclose(r["advantages"], expected[b, : lengths[b]].numpy(), atol=1e-5)


def test_hsd_peers_are_other_successes_and_seeded(server, group):
    def peers(seed):
        out = post(
            server, {"method": "hsd", "groups": [group], "return_details": True, "seed": seed}
        ).json()
        return [r["details"]["peer_index"] for r in out["groups"][0]["rollouts"]]

    first = peers(7)
    assert first == peers(7)
    successes = {i for i, r in enumerate(group["rollouts"]) if r["reward"] >= 0.5}
    for i, peer in enumerate(first):
        assert peer is None or (peer in successes and peer != i)
    assert first[0] == 2 and first[2] == 0  # the only other success


def test_bring_your_own_logprobs(app_server):
    """T3 through HTTP: opsd returns u = t - s exactly; no model call needed."""
    s, t = [-1.0, -2.0, -0.5], [-0.5, -3.0, -0.5]
    rollout = {
        "response_ids": [1, 2, 3],
        "reward": 1.0,
        "student_logprobs": s,
        "teacher_logprobs": t,
    }
    out = post(app_server, {"method": "opsd", "groups": [{"rollouts": [rollout]}]}).json()
    np.testing.assert_allclose(
        out["groups"][0]["rollouts"][0]["advantages"], [0.5, -1.0, 0.0], atol=1e-6
    )
    out = post(app_server, {"method": "opd", "groups": [{"rollouts": [rollout]}]}).json()
    np.testing.assert_allclose(
        out["groups"][0]["rollouts"][0]["advantages"], [0.666667, -0.833333, 0.166667], atol=1e-6
    )


def test_antisd_state_round_trip(server, group):
    state, gates = None, []
    for step in range(7):
        out = post(
            server, {"method": "antisd", "groups": [group], "step": step, "state": state}
        ).json()
        state = out["state"]
        gates.append(out["stats"]["gate"])
        assert out["stats"]["teacher_entropy"] > 0
    assert gates[:5] == [0] * 5
    assert len(state["warmup_history"]) == 5 and state["h_warm"] is not None
    assert gates[5] in (0, 1) and set(state) == {"warmup_history", "h_warm", "tau_down", "g"}


def test_packed_response(server, group):
    out = post(server, {"method": "grpo", "groups": [group], "encoding": "base64"}).json()
    adv = decode_packed(out["groups"][0]["rollouts"][0]["advantages"])
    assert adv.dtype == np.float32 and adv.shape == (len(group["rollouts"][0]["response_ids"]),)
    np.testing.assert_allclose(
        adv, 0.6 / np.std([1, 0, 1, 0, 0], ddof=1), atol=1e-5
    )  # rewards [1,0,1,0,0]


def test_empty_responses_give_empty_advantages(app_server):
    rollouts = [{"response_ids": [], "reward": r} for r in (1.0, 0.0)]
    for method in ("grpo", "opsd", "antisd"):
        body = {
            "method": method,
            "groups": [{"problem": PROBLEM, "reference_solution": SOLUTION, "rollouts": rollouts}],
        }
        res = post(app_server, body)
        assert res.status_code == 200, res.text
        assert [r["advantages"] for r in res.json()["groups"][0]["rollouts"]] == [[], []]


BAD = [
    (
        "length mismatch",
        {
            "method": "grpo",
            "groups": [
                {
                    "rollouts": [
                        {"response_ids": [1], "reward": 1},
                        {"response_ids": [1, 2], "reward": 0, "student_logprobs": [0.0]},
                    ]
                }
            ],
        },
        "groups[0].rollouts[1].student_logprobs",
    ),
    (
        "unknown method",
        {"method": "ppo", "groups": [{"rollouts": [{"response_ids": [1], "reward": 1}]}]},
        "method",
    ),
    (
        "unknown param",
        {
            "method": "rlsd",
            "params": {"lamda": 1},
            "groups": [{"rollouts": [{"response_ids": [1], "reward": 1}]}],
        },
        "params.lamda",
    ),
    (
        "bad param value",
        {
            "method": "amrsd",
            "params": {"kappa": "big"},
            "groups": [{"rollouts": [{"response_ids": [1], "reward": 1}]}],
        },
        "params.kappa",
    ),
    ("no groups", {"method": "grpo", "groups": []}, "groups"),
    ("no rollouts", {"method": "grpo", "groups": [{"rollouts": []}]}, "groups[0].rollouts"),
    (
        "missing reference",
        {
            "method": "opsd",
            "groups": [{"problem": "x", "rollouts": [{"response_ids": [1], "reward": 1}]}],
        },
        "groups[0].reference_solution",
    ),
    (
        "missing prompt",
        {
            "method": "opsd",
            "groups": [
                {"reference_solution": "y", "rollouts": [{"response_ids": [1], "reward": 1}]}
            ],
        },
        "groups[0].problem",
    ),
    (
        "id out of vocab",
        {"method": "grpo", "groups": [{"rollouts": [{"response_ids": [10**8], "reward": 1}]}]},
        "groups[0].rollouts[0].response_ids",
    ),
    (
        "negative step",
        {
            "method": "grpo",
            "step": -1,
            "groups": [{"rollouts": [{"response_ids": [1], "reward": 1}]}],
        },
        "step",
    ),
    (
        "bad reward",
        {"method": "grpo", "groups": [{"rollouts": [{"response_ids": [1], "reward": "yes"}]}]},
        "groups[0].rollouts[0].reward",
    ),
    (
        "bad state",
        {
            "method": "antisd",
            "state": {"g": 7},
            "groups": [
                {
                    "rollouts": [
                        {
                            "response_ids": [1],
                            "reward": 1,
                            "student_logprobs": [0.0],
                            "teacher_logprobs": [0.0],
                            "teacher_entropy": [1.0],
                        }
                    ]
                }
            ],
        },
        "state",
    ),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_requests_name_the_field(app_server, case):
    _, body, field = case
    res = post(app_server, body)
    assert res.status_code == 422, res.text
    assert res.json()["error"]["field"] == field


def test_response_over_max_model_len(app_server, app_group):
    n = call(app_server, "GET", "/v1/model").json()["max_model_len"]
    body = {
        "method": "opsd",
        "groups": [{**app_group, "rollouts": [{"response_ids": [5] * n, "reward": 1.0}]}],
    }
    res = post(app_server, body)
    assert (
        res.status_code == 422
        and res.json()["error"]["field"] == "groups[0].rollouts[0].response_ids"
    )


def test_amrsd_writes_missing_reflections(server, group):
    """Rollouts without `reflection` get one written by the model; given ones are kept."""
    rollouts = [dict(r) for r in group["rollouts"]]
    rollouts[1]["reflection"] = "Recheck the subtraction in the second step."
    body = {
        "method": "amrsd",
        "params": {"reflection_max_tokens": 32},
        "groups": [{**group, "rollouts": rollouts}],
        "return_details": True,
        "seed": 5,
    }
    first = post(server, body).json()
    again = post(server, body).json()
    for i, (rollout, result) in enumerate(zip(rollouts, first["groups"][0]["rollouts"])):
        details = result["details"]
        if i == 1:
            assert details["reflection"] is None
            assert (
                "<critique>Recheck the subtraction in the second step.</critique>"
                in details["teacher_context"]
            )
            continue
        reflection = details["reflection"]
        assert reflection["kind"] == ("hint" if rollout["reward"] >= 0.5 else "critique")
        assert (
            "14" not in (reflection["text"] or "").split()
        )  # the leak guard never lets the answer through
        if reflection["text"]:
            assert reflection["text"] in details["teacher_context"]
        else:
            assert reflection["fallback"] and "<hint>" not in details["teacher_context"]
    if server.backend == "hf":  # seeded sampling is reproducible on the hf engine
        assert first["groups"] == again["groups"]


# ---- regressions: numbers that were wrong ----------------------------------------------------------


def caller_scored(rollout: dict, t: list[float], s: list[float]) -> dict:
    return {**rollout, "teacher_logprobs": t, "student_logprobs": s}


@pytest.mark.parametrize(
    ("method", "params"),
    [("sdpo", {}), ("hsd", {"fallback": False}), ("hsd", {"mix": 1.0, "fallback": False})],
)
@pytest.mark.parametrize("caller_teacher", [False, True])
def test_group_dependent_mask_holds_whoever_scores_the_teacher(
    server, method, params, caller_teacher
):
    """Only the first rollout succeeds: it has no other success (no demonstration/peer) and no
    feedback, so its context is masked and Â = 0, also with caller-supplied teacher_logprobs."""
    texts = [SOLUTION, "12+7=18. \\boxed{13}"]
    rollouts = []
    for text, reward in zip(texts, (1.0, 0.0)):
        ids = encode(server, text)
        r = {"response_ids": ids, "reward": reward, "text": text}
        if caller_teacher:
            r = caller_scored(r, [-0.5] * len(ids), [-1.5] * len(ids))
        rollouts.append(r)
    group = {"problem": PROBLEM, "reference_answer": "14", "rollouts": rollouts}
    body = {"method": method, "params": params, "groups": [group], "return_details": True}
    res = post(server, body)
    assert res.status_code == 200, res.text
    out = res.json()
    first, second = out["groups"][0]["rollouts"]
    assert first["details"]["masked"] and first["advantages"] == [0.0] * len(
        rollouts[0]["response_ids"]
    )
    assert not second["details"]["masked"] and any(a != 0.0 for a in second["advantages"])
    assert out["stats"]["masked_rollouts"] == 1


def test_antisd_reports_the_entropy_statistic_its_gate_used(app_server):
    """Four tokens with entropies 1, 2, 3, 4: the gate's median is 2.5 (torch.median says 2)."""
    rollout = caller_scored({"response_ids": [5, 6, 7, 8], "reward": 1.0}, [-1.0] * 4, [-1.0] * 4)
    rollout["teacher_entropy"] = [1.0, 2.0, 3.0, 4.0]
    body = {"method": "antisd", "groups": [{"rollouts": [rollout]}]}
    out = post(app_server, body).json()
    assert out["stats"]["teacher_entropy"] == 2.5
    assert out["state"]["warmup_history"] == [2.5]
    body["params"] = {"gate_stat": "mean"}
    assert post(app_server, body).json()["stats"]["teacher_entropy"] == 2.5


def test_a_placeholder_inside_a_filled_value_is_left_alone(server):
    """A peer whose text contains ``{answer}`` must not receive the gold answer (a leak)."""
    peer_text = "The answer is {answer}, I guess. \\boxed{14}"
    rollouts = [
        {"response_ids": encode(server, peer_text), "reward": 1.0, "text": peer_text},
        {"response_ids": encode(server, "\\boxed{13}"), "reward": 0.0, "text": "\\boxed{13}"},
    ]
    group = {"problem": "Solve {answer}", "reference_answer": "SECRET-14", "rollouts": rollouts}
    out = post(server, {"method": "hsd", "groups": [group], "return_details": True}).json()
    context = out["groups"][0]["rollouts"][1]["details"]["teacher_context"]
    assert "The answer is {answer}, I guess." in context
    assert context.startswith("Solve {answer}")
    assert context.count("SECRET-14") == 1  # the template's own {answer}, nowhere else


@pytest.mark.parametrize(
    ("method", "missing"),
    [
        ("rlsd", "reference_answer"),
        ("opsd", "reference_solution"),
        ("hsd", "reference_answer"),
        ("antisd", "reference_solution"),
        ("sdpo", "problem"),
        ("amrsd", "problem"),
    ],
)
def test_missing_context_field_names_the_method_sent(app_server, app_group, method, missing):
    g = {k: v for k, v in app_group.items() if k != missing}
    if method == "antisd":  # no success, no peer: the dataset's solution is needed
        g["rollouts"] = [dict(r, reward=0.0) for r in app_group["rollouts"]]
    if method == "amrsd":
        g["rollouts"] = [dict(r, reflection="Recheck.") for r in app_group["rollouts"]]
    res = post(app_server, {"method": method, "groups": [g]})
    assert res.status_code == 422, res.text
    error = res.json()["error"]
    assert error["field"] == f"groups[0].{missing}"
    assert f"method {method} " in error["message"]


def test_opd_without_student_logprobs_is_a_422_that_says_why(app_server, app_group):
    res = post(app_server, {"method": "opd", "groups": [app_group]})
    assert res.status_code == 422, res.text
    error = res.json()["error"]
    assert error["field"] == "groups[0].rollouts[0].student_logprobs"
    assert "student_logprobs" in error["message"] and "zero" in error["message"]


def test_opd_scores_its_teacher_on_the_student_prompt(server, group):
    rollouts = [
        dict(r, student_logprobs=[-2.0] * len(r["response_ids"])) for r in group["rollouts"]
    ]
    body = {"method": "opd", "groups": [{**group, "rollouts": rollouts}], "return_details": True}
    res = post(server, body)
    assert res.status_code == 200, res.text
    student_prompt = httpx.post(
        server.url + "/v1/tokenize",
        json={"messages": [{"role": "user", "content": f"{PROBLEM}\n\n{BOXED}"}]},
    ).json()["ids"]
    for rollout, result in zip(rollouts, res.json()["groups"][0]["rollouts"]):
        if not rollout["response_ids"]:
            continue
        assert result["details"]["teacher_context"] == f"{PROBLEM}\n\n{BOXED}"
        expected = score(server, student_prompt, rollout["response_ids"])
        np.testing.assert_allclose(
            result["details"]["teacher_logprobs"], expected, atol=TOL[server.backend]
        )
        assert any(a != 0.0 for a in result["advantages"])


@pytest.mark.parametrize("method", ["grpo", "dr_grpo"])
def test_rewards_only_details_have_no_logprobs(app_server, app_group, method):
    out = post(app_server, {"method": method, "groups": [app_group], "return_details": True}).json()
    for result in out["groups"][0]["rollouts"]:
        assert result["details"]["student_logprobs"] is None
        assert result["details"]["teacher_logprobs"] is None
        assert result["details"]["signal"] == [0.0] * len(result["advantages"])


# ---- hostile templates and prompts (no amplification) --------------------------------------------


def test_opsd_problem_full_of_placeholders_is_a_fast_422(server):
    """24 KB of ``{solution}`` in ``problem`` was once expanded into an 8M-token prompt."""
    problem = "{solution}" * 2400
    body = {
        "method": "opsd",
        "groups": [
            {
                "problem": problem,
                "reference_solution": "x" * 200,
                "rollouts": [{"response_ids": [5, 6], "reward": 1.0}],
            }
        ],
    }
    started = time.perf_counter()
    res = post(server, body)
    elapsed = time.perf_counter() - started
    assert res.status_code == 422, res.text
    assert res.json()["error"]["field"] == "groups[0].problem"
    assert elapsed < 10.0  # was 16 s of a frozen server; now milliseconds
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200  # still serving
