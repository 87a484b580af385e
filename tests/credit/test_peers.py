"""Peer selection (docs/algorithms.md §6 T10) and HSD coverage."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from server.credit import antisd_select_solutions, hsd_select_peers, sdpo_select_demo


def other_successes(rewards_B, group_ids_B, success_threshold: float = 0.5) -> list[list[int]]:
    """cands(b) for every rollout: other successes of its group, ascending."""
    r_B = torch.as_tensor(rewards_B, dtype=torch.float64).reshape(-1)
    g_B = torch.as_tensor(group_ids_B).reshape(-1)
    same_BB = (g_B[:, None] == g_B[None, :]) & (r_B[None, :] >= success_threshold)  # (B, B)
    same_BB.fill_diagonal_(False)
    return [torch.nonzero(row).reshape(-1).tolist() for row in same_BB]


def hsd_coverage(p: float, G: int) -> float:
    """P(a rollout failed AND has a successful peer) = (1−p)·[1 − (1−p)^{G−1}].

    For G = 8 it peaks at p ≈ 0.257 (0.650).
    """
    return (1.0 - p) * (1.0 - (1.0 - p) ** (G - 1))


G4 = [0, 0, 0, 0]


def naive_cands(rewards, group_ids, thr=0.5):
    """docs/algorithms.md §5 ``other_successes`` for every rollout."""
    return [
        [
            j
            for j in range(len(rewards))
            if group_ids[j] == group_ids[b] and j != b and rewards[j] >= thr
        ]
        for b in range(len(rewards))
    ]


def observed_peers(rewards, group_ids=G4, copies=400, fallback=True, seed=0):
    """Set of peers each rollout of one group gets over ``copies`` copies of the group in one call
    (each copy draws independently); peers mapped back to the in-group index."""
    n = len(rewards)
    r = list(rewards) * copies
    g = [gid + 1000 * c for c in range(copies) for gid in group_ids]
    peers = hsd_select_peers(r, g, seed, fallback=fallback)
    seen = [set() for _ in range(n)]
    counts = [dict() for _ in range(n)]
    for i, p in enumerate(peers):
        key = p if p is None or p < 0 else p % n
        seen[i % n].add(key)
        counts[i % n][key] = counts[i % n].get(key, 0) + 1
    return seen, counts


@pytest.mark.parametrize(
    ("rewards", "want"),
    [
        ([0, 1, 0, 1], [{1, 3}, {3}, {1, 3}, {1}]),
        ([0, 0, 1, 0], [{2}, {2}, {-1}, {2}]),
        ([0, 0, 0, 0], [{-1}] * 4),
        ([1, 1, 1, 1], [{1, 2, 3}, {0, 2, 3}, {0, 1, 3}, {0, 1, 2}]),
    ],
)
def test_t10_hsd_candidate_sets(rewards, want):
    seen, counts = observed_peers(rewards)
    assert seen == want
    # uniform: every candidate drawn about equally often (400 draws each row)
    for row in counts:
        if len(row) > 1:
            freq = np.array(list(row.values())) / 400
            assert np.all(np.abs(freq - 1 / len(row)) < 0.1), row


def test_t10_hsd_no_fallback():
    assert hsd_select_peers([0, 0, 0, 0], G4, 0, fallback=False) == [None] * 4
    peers = hsd_select_peers([0, 0, 1, 0], G4, 0, fallback=False)
    assert peers == [2, 2, None, 2]


def test_t10_seeded_determinism():
    r = [0, 1, 0, 1, 1, 1, 1, 1] * 8
    g = [i // 8 for i in range(64)]
    a = hsd_select_peers(r, g, 123)
    assert a == hsd_select_peers(r, g, 123)
    assert a == hsd_select_peers(
        torch.tensor(r), torch.tensor(g), torch.Generator().manual_seed(123)
    )
    assert any(hsd_select_peers(r, g, s) != a for s in range(1, 5))


def test_t10_threshold_and_peer_rule():
    assert hsd_select_peers([0.4, 0.6], [0, 0], 0, success_threshold=0.5) == [1, -1]
    assert hsd_select_peers([0.4, 0.6], [0, 0], 0, success_threshold=0.3) == [1, 0]
    with pytest.raises(ValueError, match="peer_rule"):
        hsd_select_peers([1, 0], [0, 0], 0, peer_rule="shortest")


@pytest.mark.parametrize(
    ("rewards", "want"),
    [
        ([0, 1, 0, 1], [1, 3, 1, 1]),
        ([0, 0, 1, 0], [2, 2, None, 2]),
        ([1, 1, 1, 1], [1, 0, 0, 0]),
        ([0, 0, 0, 0], [None] * 4),
    ],
)
def test_t10_sdpo_demo(rewards, want):
    assert sdpo_select_demo(rewards, G4) == want


def test_t10_sdpo_self_success_allowed():
    assert sdpo_select_demo([0, 1, 0, 1], G4, dont_reprompt_on_self_success=False) == [1, 1, 1, 1]
    assert sdpo_select_demo([0, 0, 1, 0], G4, dont_reprompt_on_self_success=False) == [2, 2, 2, 2]


def test_t10_antisd_solutions():
    assert antisd_select_solutions([0, 0, 0, 0], G4, 0) == [-1] * 4
    assert antisd_select_solutions([0, 0, 1, 0], G4, 0) == [2, 2, -1, 2]


def test_empty_batch():
    assert hsd_select_peers([], [], 0) == []
    assert sdpo_select_demo([], []) == []


@settings(max_examples=60, deadline=None, database=None)
@given(
    sizes=st.lists(st.integers(1, 6), min_size=1, max_size=5),
    seed=st.integers(0, 2**31 - 1),
    data=st.data(),
)
def test_vectorised_selection_matches_candidate_lists(sizes, seed, data):
    """Multiple interleaved groups with arbitrary ids: every draw is a candidate, SDPO picks the
    first one, and `other_successes` equals the naive list comprehension."""
    ids = data.draw(
        st.permutations([7 * k - 3 for k in range(len(sizes)) for _ in range(sizes[k])])
    )
    rewards = data.draw(
        st.lists(st.sampled_from([0.0, 1.0, 0.5, 0.2]), min_size=len(ids), max_size=len(ids))
    )
    cands = naive_cands(rewards, ids)
    assert other_successes(rewards, ids) == cands
    for fallback in (True, False):
        peers = hsd_select_peers(rewards, ids, seed, fallback=fallback)
        for b, p in enumerate(peers):
            if cands[b]:
                assert p in cands[b]
            else:
                assert p == (-1 if fallback else None)
    assert sdpo_select_demo(rewards, ids) == [c[0] if c else None for c in cands]


def test_coverage():
    # f(p, 8) = (1 − p)·(1 − (1 − p)^7)
    assert hsd_coverage(0.25, 8) == pytest.approx(0.649887, abs=1e-6)
    assert hsd_coverage(0.26, 8) == pytest.approx(0.650081, abs=1e-6)
    grid = np.linspace(0, 1, 100001)
    f = np.array([hsd_coverage(p, 8) for p in grid])
    assert f.max() == pytest.approx(0.650123, abs=1e-6)
    assert grid[f.argmax()] == pytest.approx(0.257, abs=1e-3)
    assert hsd_coverage(0.0, 8) == 0.0 and hsd_coverage(1.0, 8) == 0.0
