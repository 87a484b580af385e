"""CPU cost of the credit math: every method on 1M tokens.

2048 rollouts × 512 positions (groups of 8, response lengths uniform in 1..512, float32), the
shape of one large training batch. Prints milliseconds per call (median of the repeats after
warm-up) and tokens per second. Target: under 100 ms per 1M tokens for every method.

    python benchmarks/credit_math.py [--rollouts 2048] [--tokens 512] [--repeats 7] [--threads N]

On a shared or small machine pass ``--threads 1``: torch's intra-op pool then cannot be stalled by
other processes, and the min column shows the uncontended cost.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from server.credit import (
    METHODS,
    CreditInputs,
    compute_credit,
    hsd_select_peers,
    parse_params,
)

OPEN_GATE = {"warmup_history": [2.0] * 5, "h_warm": 2.0, "tau_down": 1.86, "g": 1}


def make_inputs(B: int, T: int, group: int, seed: int = 0) -> CreditInputs:
    g = torch.Generator().manual_seed(seed)
    lengths_B = torch.randint(1, T + 1, (B,), generator=g)
    mask_BT = torch.arange(T)[None, :] < lengths_B[:, None]  # (B, T)
    student_BT = -torch.rand(B, T, generator=g) * 5.0
    teacher_BT = student_BT + torch.randn(B, T, generator=g)
    student_BT[~mask_BT] = float("nan")  # padding garbage must not matter
    teacher_BT[~mask_BT] = -float("inf")
    return CreditInputs(
        mask_BT=mask_BT,
        rewards_B=(torch.rand(B, generator=g) < 0.4).float(),
        group_ids_B=torch.arange(B) // group,
        student_lp_BT=student_BT,
        teacher_lp_BT=teacher_BT,
        teacher_entropy_BT=torch.rand(B, T, generator=g) + 1.5,  # median ≈ 2.0: gate stays open
        context_mask_B=torch.rand(B, generator=g) < 0.9,
        step=10,  # inside the annealing window: rlsd/amrsd do the full computation
    )


def time_call(fn, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(median, min) milliseconds per call after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, min(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rollouts", type=int, default=2048)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    inputs = make_inputs(args.rollouts, args.tokens, args.group)
    n_slots = args.rollouts * args.tokens
    n_tok = int(inputs.mask_BT.sum())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; [B, T] = "
        f"[{args.rollouts}, {args.tokens}] = {n_slots / 1e6:.2f}M slots, {n_tok / 1e6:.2f}M generated "
        f"tokens, float32, median of {args.repeats}"
    )
    print(f"{'method':<10}{'median ms':>10}{'min ms':>8}{'M slots/s':>11}  note")
    for name in METHODS:
        params = parse_params(name, {"mix": 0.5} if name == "hsd" else {})
        state = OPEN_GATE if name == "antisd" else None
        res = compute_credit(name, inputs, params, state)
        assert not res.advantages_BT.isnan().any()
        note = f"gate={res.gate}" if name == "antisd" else ("mix=0.5" if name == "hsd" else "")
        ms, best = time_call(
            lambda n=name, p=params, s=state: compute_credit(n, inputs, p, s), args.repeats
        )
        flag = "" if ms < 100 else "  (over the 100 ms target)"
        print(f"{name:<10}{ms:>10.1f}{best:>8.1f}{n_slots / ms / 1e3:>11.1f}  {note}{flag}")
    ms, best = time_call(
        lambda: hsd_select_peers(inputs.rewards_B, inputs.group_ids_B, 0), args.repeats
    )
    print(
        f"{'peers':<10}{ms:>10.1f}{best:>8.1f}{'':>11}  hsd_select_peers, {args.rollouts} rollouts"
    )


if __name__ == "__main__":
    main()
