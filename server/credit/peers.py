"""Peer selection for teacher contexts: which other rollout of the group a teacher gets to see.

Pure functions of rewards and group ids (no text, no I/O); the server builds the prompts. Indices
are batch indices (positions in ``rewards_B``). Candidates of rollout b are the *other* rollouts of
its group with reward >= success_threshold::

    cands(b) = [j for j in range(B) if gid[j] == gid[b] and j != b and r[j] >= threshold]

- HSD (arXiv 2606.15576): a uniform draw from cands(b); none: −1 (answer-only fallback, c = a*),
  or None with ``fallback=False`` (no context: the row is masked).
- SDPO (arXiv 2601.20802): the first candidate (lowest index), None without one; with
  ``dont_reprompt_on_self_success=False`` a success may be its own demonstration.
- AntiSD (arXiv 2605.11609): as HSD with fallback; −1 means the dataset's solution.

Draws are vectorised: one float64 uniform per rollout from a seeded generator (one draw per
rollout whatever its candidates), mapped to the k-th candidate in index order, so the same seed,
rewards and group ids always give the same peers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

Rng = int | torch.Generator


def _as_tensors(rewards_B, group_ids_B) -> tuple[torch.Tensor, torch.Tensor]:
    r_B = torch.as_tensor(rewards_B, dtype=torch.float64).reshape(-1)
    g_B = torch.as_tensor(group_ids_B).reshape(-1)
    if g_B.numel() == 0:
        g_B = g_B.long()  # torch.as_tensor([]) is float
    if r_B.shape != g_B.shape:
        raise ValueError(f"rewards has {r_B.numel()} entries but group_ids has {g_B.numel()}")
    if g_B.is_floating_point():
        raise ValueError("group_ids must be integers")
    return r_B, g_B


def _success_table(r_B: torch.Tensor, g_B: torch.Tensor, threshold: float):
    """Successes sorted by (group, index) and where each group's run starts.

    Returns gid_B (dense group of each rollout), succ_B (bool), S_K (success indices by group then
    index), start_G and n_G (each group's run in S_K), pos_B (rank of a success in its run, −1 else).
    """
    B = r_B.numel()
    _, gid_B = torch.unique(g_B, return_inverse=True)  # (B,) dense ids
    G = int(gid_B.max()) + 1 if B else 0
    succ_B = r_B >= threshold  # (B,)
    idx_K = torch.nonzero(succ_B).reshape(-1)  # (K,) ascending
    _, order_K = torch.sort(gid_B[idx_K], stable=True)
    S_K = idx_K[order_K]  # (K,) by group, then index
    n_G = torch.bincount(gid_B[idx_K], minlength=G)  # (G,) successes per group
    start_G = torch.cumsum(n_G, 0) - n_G  # (G,)
    pos_B = torch.full((B,), -1, dtype=torch.long)
    pos_B[S_K] = torch.arange(S_K.numel()) - start_G[gid_B[S_K]]
    return gid_B, succ_B, S_K, start_G, n_G, pos_B


def _generator(rng: Rng) -> torch.Generator:
    if isinstance(rng, torch.Generator):
        return rng
    # torch takes seeds in [-2**63, 2**64): reduce mod 2**64 (the same generator for every seed it
    # accepts) so any integer a request sends is a seed, not a 500.
    return torch.Generator().manual_seed(int(rng) % 2**64)


def hsd_select_peers(
    rewards_B: torch.Tensor | Sequence[float],
    group_ids_B: torch.Tensor | Sequence[int],
    rng: Rng = 0,
    success_threshold: float = 0.5,
    fallback: bool = True,
    peer_rule: Literal["uniform"] = "uniform",
) -> list[int | None]:
    """Per rollout: a uniformly drawn other success of its group (batch index); −1 when there is
    none and ``fallback`` (answer-only context); None when there is none and not ``fallback``.

    ``rng``: a seed or a torch.Generator (advanced by one draw of B uniforms).
    """
    if peer_rule != "uniform":
        raise ValueError(f"peer_rule {peer_rule!r} is not supported; use 'uniform'")
    r_B, g_B = _as_tensors(rewards_B, group_ids_B)
    B = r_B.numel()
    if B == 0:
        return []
    gid_B, succ_B, S_K, start_G, n_G, pos_B = _success_table(r_B, g_B, success_threshold)
    n_B = n_G[gid_B] - succ_B.long()  # (B,) number of candidates (self excluded)
    U_B = torch.rand(B, generator=_generator(rng), dtype=torch.float64)
    k_B = torch.minimum((U_B * n_B).long(), (n_B - 1).clamp(min=0))  # (B,) uniform in [0, n)
    k_B = k_B + (succ_B & (k_B >= pos_B)).long()  # skip the rollout's own slot
    has_B = n_B > 0
    at_B = torch.where(has_B, start_G[gid_B] + k_B, 0)
    peer_B = torch.where(has_B, S_K[at_B] if S_K.numel() else torch.zeros_like(at_B), -1)
    none = -1 if fallback else None
    return [int(p) if p >= 0 else none for p in peer_B.tolist()]


def antisd_select_solutions(
    rewards_B: torch.Tensor | Sequence[float],
    group_ids_B: torch.Tensor | Sequence[int],
    rng: Rng = 0,
    success_threshold: float = 0.5,
) -> list[int]:
    """AntiSD's verified solution: a uniformly drawn other success, −1 = the dataset's solution.

    Leaving out the rollout's own solution follows SDPO and HSD [R].
    """
    peers = hsd_select_peers(rewards_B, group_ids_B, rng, success_threshold, fallback=True)
    return [-1 if p is None else p for p in peers]


def sdpo_select_demo(
    rewards_B: torch.Tensor | Sequence[float],
    group_ids_B: torch.Tensor | Sequence[int],
    success_threshold: float = 0.5,
    dont_reprompt_on_self_success: bool = True,
) -> list[int | None]:
    """Per rollout: the first (lowest-index) other success of its group, None without one.

    With ``dont_reprompt_on_self_success=False`` the first success of the group, self included.
    """
    r_B, g_B = _as_tensors(rewards_B, group_ids_B)
    if r_B.numel() == 0:
        return []
    gid_B, _, S_K, start_G, n_G, pos_B = _success_table(r_B, g_B, success_threshold)
    n_B = n_G[gid_B]  # (B,) successes in the group, self included
    # First success of the group, or the second when b itself is the first (and self is excluded).
    k_B = (pos_B == 0).long() if dont_reprompt_on_self_success else torch.zeros_like(n_B)
    has_B = k_B < n_B
    at_B = torch.where(has_B, start_G[gid_B] + k_B, 0)
    demo_B = torch.where(has_B, S_K[at_B] if S_K.numel() else torch.zeros_like(at_B), -1)
    return [int(d) if d >= 0 else None for d in demo_B.tolist()]
