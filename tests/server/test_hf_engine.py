"""The transformers engine in-process: shared-prefix reuse and batching change no number."""

from __future__ import annotations

import numpy as np
import pytest

from server.engines.base import GenerateItem, ScoreItem
from server.engines.hf import HFEngine, _SharedUnit
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


def test_many_groups_in_one_forward_equal_scoring_alone(engine):
    """Groups with contexts of different lengths share one left-padded forward (masked pad keys,
    positions counting real tokens): every number equals scoring the item on its own."""
    rng = np.random.default_rng(2)
    V = engine.info.vocab_size
    items = []
    for context_len in (40, 44, 48):  # within MAX_PAD_RATIO: one pack
        context = tuple(rng.integers(0, V, context_len).tolist())
        items += [
            ScoreItem(context, tuple(rng.integers(0, V, n).tolist()), top_k=2, entropy=True)
            for n in (0, 1, 10, 12)
        ]
    before = engine.stats["prefix_cached_tokens"]
    together = engine.score_sync(items)
    assert engine.stats["prefix_cached_tokens"] - before == 3 * (40 + 44 + 48)
    for item, shared in zip(items, together):
        alone = engine.score_sync([item])[0]
        assert len(shared.logprobs) == len(item.target_ids)
        np.testing.assert_allclose(shared.logprobs, alone.logprobs, atol=1e-5)
        np.testing.assert_allclose(shared.entropy, alone.entropy, atol=1e-5)
        np.testing.assert_array_equal(shared.topk_ids, alone.topk_ids)


def test_shared_units_pack_under_budget_and_ratio(engine):
    def unit(context_len, longest, rows=4):
        return _SharedUnit(tuple(range(context_len)), list(range(rows)), longest)

    # same shapes: one forward; budget 512 holds 3 x 16 + 12 x 20 tokens
    packs = engine._pack_units([unit(16, 20), unit(16, 20), unit(16, 20)])
    assert [len(p) for p in packs] == [3]
    # contexts 16 vs 40: padding would exceed MAX_PAD_RATIO, so two forwards
    assert [len(p) for p in engine._pack_units([unit(16, 20), unit(40, 20)])] == [1, 1]
    # together they would hold 60 rows x (16 + 10) tokens of KV and targets: over 512
    assert [len(p) for p in engine._pack_units([unit(16, 10, 30), unit(16, 10, 8)])] == [1, 1]


def test_a_long_shared_context_is_split_so_kv_copies_fit_the_budget(engine):
    """Each row of a run holds a copy of the context's KV: 8 rows x (200 + 10) tokens would be
    3.3x the 512-token budget, so the group runs in pieces (recomputing the context is cheaper
    than running out of memory)."""
    context = tuple(range(200))
    items = [ScoreItem(context, tuple(range(10))) for _ in range(8)]
    runs = engine._split_group(list(range(8)), items, len(context))
    assert sorted(i for run in runs for i in run) == list(range(8))
    assert all(len(run) * (200 + 10) <= 512 for run in runs) and len(runs) == 4


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
