"""HSD's localisation claim without training: where does the |signal| sit around the divergence?

docs/algorithms.md §4.6 (HSD): the credit of a failed rollout concentrates where it leaves the path of
the successful peer its teacher saw; OPSD's is "roughly uniform". On the initial policy's rollouts
(≥ ``target`` failed rollouts that HSD gave a successful peer), with τ the first response index
where the rollout and its peer differ (:func:`trainer.toy.analysis.first_divergence`)::

    share(bin) = Σ_rollouts Σ_{t ∈ bin(τ)} |s_t|  /  Σ_rollouts Σ_t |s_t|

for the bins "before" (t < τ), "at" (t = τ), "±1" (|t − τ| ≤ 1) and "±2" (|t − τ| ≤ 2), against:

- **uniform**: the same |signal| mass spread evenly over each response (bin length / L);
- **random position**: HSD's own |signal| in the same bin around a uniformly drawn τ' ∈ [0, L);
- **OPSD**: OPSD's u_t (teacher = the reference solution) on the same rollouts, in the bin around
  *its own* divergence τ_ref, the first index where the rollout leaves the reference solution.

Intervals: 95% percentile bootstrap over rollouts; differences are paired (same resampled rollouts).
Responses here are ~22 tokens, so ±8 would cover most of a response: the bins stop at ±2.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from trainer.toy import analysis, stats
from trainer.toy.arith import random_problem
from trainer.toy.loop import (
    TRAIN_SEED_OFFSET,
    Config,
    model_path,
    request_groups,
    response_logprobs,
    sample_batch,
)

BINS = ("before", "at", "pm1", "pm2")
BIN_LABELS = {"before": "before τ", "at": "at τ", "pm1": "τ ± 1", "pm2": "τ ± 2"}


def bin_indices(name: str, tau: int, L: int) -> range:
    if name == "before":
        return range(0, min(tau, L))
    half = {"at": 0, "pm1": 1, "pm2": 2}[name]
    return range(max(0, tau - half), min(L, tau + half + 1))


def bin_mass(signal_T: np.ndarray, tau: int, name: str) -> float:
    s = np.abs(np.asarray(signal_T, dtype=np.float64))
    return float(s[list(bin_indices(name, tau, s.size))].sum())


@dataclass
class RolloutRecord:
    L: int
    tau: int  # divergence from HSD's peer
    tau_random: int
    tau_ref: int  # divergence from the reference solution (OPSD's teacher)
    hsd: np.ndarray  # |u_t| of HSD
    opsd: np.ndarray  # |u_t| of OPSD


def collect(client, model, tokenizer, cfg: Config, target: int, seed: int, max_batches: int = 200):
    """Sample batches from ``model`` until ``target`` failed rollouts with a peer are recorded."""
    rng = random.Random(TRAIN_SEED_OFFSET + 500 + seed)
    pick = random.Random(seed)
    G = cfg.group_size
    records: list[RolloutRecord] = []
    seen = 0
    for k in range(max_batches):
        if len(records) >= target:
            break
        torch.manual_seed(seed * 7919 + k)
        problems = [random_problem(rng) for _ in range(cfg.prompts_per_step)]
        batch = sample_batch(model, tokenizer, problems, cfg)
        with torch.no_grad():
            old_lp = response_logprobs(model, batch, cfg.temperature)
        groups = request_groups(batch, old_lp, G)
        hsd = client.advantages("hsd", groups, step=0, seed=seed * 1000 + k, return_details=True)
        opsd = client.advantages("opsd", groups, step=0, seed=seed * 1000 + k, return_details=True)
        hsd_flat = [r for g in hsd.groups for r in g]
        opsd_flat = [r for g in opsd.groups for r in g]
        ref_ids = tokenizer([p.solution for p in problems], add_special_tokens=False)["input_ids"]
        for b, credit in enumerate(hsd_flat):
            d = credit.details
            if d is None or d.peer_index is None or batch.rewards_B[b] >= 0.5:
                continue
            seen += 1
            ids = batch.response_ids_B[b]
            peer = batch.response_ids_B[(b // G) * G + d.peer_index]
            tau = analysis.first_divergence(ids, peer)
            tau_ref = analysis.first_divergence(ids, ref_ids[b // G])
            L = len(ids)
            h = np.abs(np.asarray(d.signal, dtype=np.float64))
            o = np.abs(np.asarray(opsd_flat[b].details.signal, dtype=np.float64))
            if tau >= L or tau_ref >= L or h.sum() <= 0 or o.sum() <= 0:
                continue  # no token at the divergence, or no signal to place
            records.append(RolloutRecord(L, tau, pick.randrange(L), tau_ref, h, o))
    return records, seen


def measure(records: list[RolloutRecord]) -> dict:
    """Shares per bin with bootstrap intervals, and the paired differences HSD − baseline."""
    hsd_tot = [r.hsd.sum() for r in records]
    opsd_tot = [r.opsd.sum() for r in records]
    out: dict = {"rollouts": len(records), "mean_length": float(np.mean([r.L for r in records]))}
    for name in BINS:
        hsd_num = [bin_mass(r.hsd, r.tau, name) for r in records]
        uni_num = [r.hsd.sum() * len(bin_indices(name, r.tau, r.L)) / r.L for r in records]
        rnd_num = [bin_mass(r.hsd, r.tau_random, name) for r in records]
        opsd_num = [bin_mass(r.opsd, r.tau_ref, name) for r in records]
        opsd_at_hsd = [bin_mass(r.opsd, r.tau, name) for r in records]
        out[name] = {
            "hsd": stats.bootstrap_ratio_interval(hsd_num, hsd_tot).as_dict(),
            "uniform": stats.bootstrap_ratio_interval(uni_num, hsd_tot).as_dict(),
            "random_position": stats.bootstrap_ratio_interval(rnd_num, hsd_tot).as_dict(),
            "opsd_own_tau": stats.bootstrap_ratio_interval(opsd_num, opsd_tot).as_dict(),
            "opsd_at_hsd_tau": stats.bootstrap_ratio_interval(opsd_at_hsd, opsd_tot).as_dict(),
            "hsd_minus_uniform": stats.bootstrap_diff_interval(
                hsd_num, hsd_tot, uni_num, hsd_tot
            ).as_dict(),
            "hsd_minus_random": stats.bootstrap_diff_interval(
                hsd_num, hsd_tot, rnd_num, hsd_tot
            ).as_dict(),
            "hsd_minus_opsd": stats.bootstrap_diff_interval(
                hsd_num, hsd_tot, opsd_num, opsd_tot
            ).as_dict(),
        }
    return out


def run(client, model_dir: str, target: int, seed: int, prompts: int = 16, group: int = 8) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = Config(method="hsd", model=model_dir, prompts_per_step=prompts, group_size=group)
    path = model_path(cfg)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    records, seen = collect(client, model, tokenizer, cfg, target, seed)
    result = measure(records)
    result["failed_with_peer_seen"] = seen
    result["target"] = target
    return result
