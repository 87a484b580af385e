"""Held-out evaluation: paired draws (same seed, same numbers), RNG restored, pass@k ≥ sampled."""

from __future__ import annotations

import os

import torch

from server.settings import DEFAULT_MODEL_DIR
from trainer.toy.arith import generate_problems
from trainer.toy.evaluate import evaluate_policy

MODEL = os.environ.get("TC_TEST_MODEL") or str(DEFAULT_MODEL_DIR)


def test_evaluation_is_paired_and_leaves_the_rng_alone():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32)
    model.train()
    problems = generate_problems(24, seed=5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = evaluate_policy(model, tokenizer, problems, 0, 40, samples=4, sampling_seed=7)
    assert torch.equal(torch.get_rng_state(), before)  # training draws are not shifted
    b = evaluate_policy(model, tokenizer, problems, 0, 40, samples=4, sampling_seed=7)
    assert a == b  # same seed: the same draws
    assert model.training  # restored
    assert 0.0 <= a.sampled <= a.pass_at_k <= 1.0 and a.k == 4
    others = [
        evaluate_policy(model, tokenizer, problems, 0, 40, samples=4, sampling_seed=s).sampled
        for s in (8, 9)
    ]
    assert any(x != a.sampled for x in others)  # the seed does decide the draws
