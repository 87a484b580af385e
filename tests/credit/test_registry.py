"""Registry: ids, typed defaults of docs/algorithms.md §1, parameter validation, teacher needs."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

import server.credit as credit
from server.credit import (
    METHODS,
    CreditInputs,
    UnknownMethodError,
    compute_credit,
    get_method,
    parse_params,
)

# docs/algorithms.md §1 "Service defaults"
DEFAULTS = {
    "grpo": {"grpo_std": "unbiased", "eps": 1e-6},
    "dr_grpo": {"grpo_std": "none", "eps": 1e-6},
    "opd": {"kl_coef": 1.0, "center": True},
    "opsd": {},
    "sdpo": {
        "success_threshold": 0.5,
        "dont_reprompt_on_self_success": True,
        "remove_thinking_from_demonstration": True,
        "include_environment_feedback": True,
        "environment_feedback_only_without_solution": True,
        "max_reprompt_len": 10240,
    },
    "rlsd": {"eps_w": 0.2, "lam_init": 0.5, "decay_steps": 50, "grpo_std": "unbiased", "eps": 1e-6},
    "hsd": {
        "mix": 0.0,
        "success_threshold": 0.5,
        "peer_rule": "uniform",
        "fallback": True,
        "remove_thinking_from_demonstration": True,
        "max_reprompt_len": 10240,
        "grpo_std": "unbiased",
        "eps": 1e-6,
    },
    "antisd": {
        "lam_max": 0.5,
        "warmup_steps": 5,
        "ratio_down": 0.93,
        "gate_stat": "median",
        "success_threshold": 0.5,
        "grpo_std": "unbiased",
        "eps": 1e-6,
    },
    "amrsd": {
        "lam": 0.2,
        "gamma": 0.1,
        "kappa": 5,
        "tau": 0.5,
        "t_decay": 50,
        "grpo_std": "unbiased",
        "eps": 1e-6,
        "success_threshold": 0.5,
        # generation settings of the reflections the server writes itself [R]
        "reflection_max_tokens": 128,
        "reflection_temperature": 0.7,
    },
}

# What each method declares about its teacher: (needs teacher, peer rule, context can be masked,
# needs entropy, needs reflections, student log-probs from the caller only).
DECLARED = {
    "grpo": (False, False, False, False, False, False),
    "dr_grpo": (False, False, False, False, False, False),
    "opd": (True, False, False, False, False, True),
    "opsd": (True, False, False, False, False, False),
    "sdpo": (True, True, True, False, False, False),
    "rlsd": (True, False, False, False, False, False),
    "hsd": (True, True, True, False, False, False),
    "antisd": (True, True, False, True, False, False),
    "amrsd": (True, False, False, False, True, False),
}


def test_ids_match_the_wire_enum():
    from proto.advantages import METHODS as WIRE_METHODS

    assert tuple(METHODS) == WIRE_METHODS


@pytest.mark.parametrize("method", list(METHODS))
def test_defaults(method):
    m = get_method(method)
    assert m.id == method
    assert parse_params(method).model_dump() == DEFAULTS[method]
    assert parse_params(method, {}).model_dump() == DEFAULTS[method]
    declared = (
        m.needs_teacher,
        m.select_peers is not None,
        m.has_context is not None,
        m.needs_entropy,
        m.needs_reflections,
        m.student_from_caller is not None,
    )
    assert declared == DECLARED[method]
    assert (m.teacher_message is not None) == m.needs_teacher
    assert m.paper and m.formula


@pytest.mark.parametrize("method", list(METHODS))
def test_unknown_param_names_the_field(method):
    with pytest.raises(ValidationError) as err:
        parse_params(method, {"lamda": 0.3})
    e = err.value.errors()[0]
    assert e["type"] == "extra_forbidden" and e["loc"] == ("lamda",)


@pytest.mark.parametrize(
    ("method", "params", "field"),
    [
        ("grpo", {"grpo_std": "biased"}, "grpo_std"),
        ("antisd", {"gate_stat": "max"}, "gate_stat"),
        ("hsd", {"peer_rule": "shortest"}, "peer_rule"),
        ("antisd", {"warmup_steps": 0}, "warmup_steps"),
        ("rlsd", {"eps_w": 1.0}, "eps_w"),
        ("rlsd", {"lam_init": 1.5}, "lam_init"),
        ("amrsd", {"kappa": 0}, "kappa"),
        ("sdpo", {"max_reprompt_len": 0}, "max_reprompt_len"),
        ("opd", {"center": "maybe"}, "center"),
    ],
)
def test_bad_values_name_the_field(method, params, field):
    with pytest.raises(ValidationError) as err:
        parse_params(method, params)
    assert err.value.errors()[0]["loc"] == (field,)


def test_overrides_and_models_are_frozen():
    p = parse_params("amrsd", {"tau": 1.0, "grpo_std": "none"})
    assert p.tau == 1.0 and p.grpo_std == "none" and p.lam == 0.2
    with pytest.raises(ValidationError):
        p.tau = 2.0  # type: ignore[misc]
    # a model instance passes through
    assert get_method("amrsd").parse_params(p) is p


def test_unknown_method():
    with pytest.raises(UnknownMethodError, match="unknown method 'ppo'"):
        get_method("ppo")
    with pytest.raises(ValueError, match="grpo, dr_grpo"):
        compute_credit("ppo", None)  # type: ignore[arg-type]


def test_compute_through_registry_object():
    inp = CreditInputs(
        mask_BT=torch.ones(2, 2, dtype=torch.bool),
        rewards_B=torch.tensor([1.0, 0.0]),
        group_ids_B=torch.tensor([0, 0]),
        student_lp_BT=torch.zeros(2, 2),
        teacher_lp_BT=torch.full((2, 2), 0.5),
    )
    res = get_method("opsd").compute(inp)
    assert res.advantages_BT.tolist() == [[0.5, 0.5], [0.5, 0.5]]
    assert res.state is None and res.gate is None


def test_all_exported_names_exist():
    assert sorted(credit.__all__) == sorted(set(credit.__all__))
    for name in credit.__all__:
        assert hasattr(credit, name), name


def test_docstring_examples():
    import doctest

    from proto import prompts
    from server.credit import antisd, registry

    for module in (antisd, registry, prompts):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
