"""The transformers engine in-process: shared-prefix reuse and batching change no number."""

from __future__ import annotations

import numpy as np
import pytest

from server.engines.base import GenerateItem, ScoreItem
from server.engines.hf import HFEngine
from server.settings import Settings


@pytest.fixture(scope="module")
def engine(model_path):
    return HFEngine.load(
        Settings(model=model_path, device="cpu", dtype="float32", max_batch_tokens=512)
    )


def test_shared_prefix_equals_scoring_alone(engine):
    rng = np.random.default_rng(0)
    V = engine.info.vocab_size
    context = tuple(rng.integers(0, V, 60).tolist())
    items = [
        ScoreItem(context, tuple(rng.integers(0, V, n).tolist()), top_k=3, entropy=True)
        for n in (0, 1, 5, 30, 31)
    ]
    together = engine.score_sync(items)  # one group: context computed once, KV reused
    for item, shared in zip(items, together):
        alone = engine.score_sync([item])[0]
        np.testing.assert_allclose(shared.logprobs, alone.logprobs, atol=1e-5)
        np.testing.assert_allclose(shared.entropy, alone.entropy, atol=1e-5)
        np.testing.assert_array_equal(shared.topk_ids, alone.topk_ids)


def test_small_budget_splits_but_keeps_numbers(engine, model_path):
    tight = HFEngine(
        engine._model,
        engine.tokenizer,
        Settings(model=model_path, max_batch_tokens=16),
        "cpu",
        engine.dtype,
    )
    rng = np.random.default_rng(1)
    V = engine.info.vocab_size
    items = [
        ScoreItem(tuple(rng.integers(0, V, 9).tolist()), tuple(rng.integers(0, V, 9).tolist()))
        for _ in range(6)
    ]
    for a, b in zip(engine.score_sync(items), tight.score_sync(items)):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)


def test_generation_is_seeded_and_batch_independent(engine):
    prompt = tuple(
        engine.tokenizer.apply_chat_template(
            [{"role": "user", "content": "What is 3+4?"}],
            tokenize=True,
            add_generation_prompt=True,
            return_dict=False,
        )
    )
    alone = engine.generate_sync([GenerateItem(prompt, 12, temperature=1.0, seed=5)])[0]
    batch = engine.generate_sync(
        [GenerateItem(prompt[:4], 7, 1.0, seed=1), GenerateItem(prompt, 12, 1.0, seed=5)]
    )[1]
    assert alone.token_ids == batch.token_ids and len(alone.token_ids) <= 12
    greedy = engine.generate_sync([GenerateItem(prompt, 12, temperature=0.0)])[0]
    assert greedy.finish_reason in ("stop", "length")
