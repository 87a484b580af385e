"""Learning curves through TRL (`trainer.trl`) and the toy loop (`trainer.toy`), same settings.

    nice -n 10 python benchmarks/trl_curve.py --steps 40 --methods grpo hsd \
        --out docs/measured/trl_curve.json --figure docs/figures/trl_curve.png

One hf server (1 torch thread) serves every run; each run pushes its initial weights first, so
they all start from the same teacher. Settings shared by both trainers: the embedded model, 16
prompts x 8 samples per step from the same problem stream (seed 0, unshuffled), temperature 1,
<= 48 new tokens, AdamW lr 1e-4 with 10 warm-up steps, grad clip 1.0, token-mean PPO-clip loss,
one update per batch, teacher weights pushed every step (hsd). Greedy accuracy on 200 held-out
problems (seed 10 000) at step 0 and every --eval-every steps. Prints one table per comparison
(95% intervals) and writes the JSON the figure is drawn from.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from client import TeacherClient
from client.launcher import ServerProcess
from trainer.toy import loop as toy
from trainer.toy.arith import generate_problems

REPO = Path(__file__).resolve().parents[1]


def run_trl(method, steps, seed, url, root, out, eval_every, eval_n):
    from transformers import AutoTokenizer, TrainerCallback

    from trainer.trl import TokenCreditConfig, TokenCreditGRPOTrainer
    from trainer.trl.arith import arith_dataset, boxed_reward

    model = str(toy.DEFAULT_MODEL)
    tok = AutoTokenizer.from_pretrained(model)
    eval_set = generate_problems(eval_n, seed=toy.EVAL_SEED)
    curve = []

    class Eval(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            curve.append((0, toy.greedy_accuracy(model, tok, eval_set, 48)))

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % eval_every == 0 or state.global_step == steps:
                curve.append((state.global_step, toy.greedy_accuracy(model, tok, eval_set, 48)))

    cfg = TokenCreditConfig(
        output_dir=str(out),
        credit_method=method,
        teacher_url=url,
        teacher_weights_root=root,
        max_steps=steps,
        seed=seed,
        credit_seed=seed,
        per_device_train_batch_size=128,
        num_generations=8,
        max_completion_length=48,
        learning_rate=1e-4,
        warmup_steps=10,
        lr_scheduler_type="constant_with_warmup",
        loss_type="dapo",
        logging_steps=1,
        save_strategy="no",
        shuffle_dataset=False,
        use_cpu=True,
        bf16=False,
        report_to="none",
        disable_tqdm=True,
    )
    trainer = TokenCreditGRPOTrainer(
        model=model,
        reward_funcs=boxed_reward,
        args=cfg,
        train_dataset=arith_dataset(steps * 16, seed=seed),
        processing_class=tok,
        callbacks=[Eval()],
    )
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    hist = [h for h in trainer.state.log_history if "reward" in h]

    def mean(key):
        return float(np.mean([h.get(key, 0.0) for h in hist]))

    return {
        "reward": [h["reward"] for h in hist],
        "eval": curve,
        "seconds_per_step": {
            "generation": mean("timing/generation"),
            "scoring": mean("timing/scoring"),
            "student_logprobs": mean("timing/student_logprobs"),
            "update": mean("timing/update"),
            "push": mean("timing/push"),
            "total": wall / steps,
        },
    }


def run_toy(method, steps, seed, url, root, out, eval_every, eval_n):
    cfg = toy.Config(
        method=method,
        steps=steps,
        seed=seed,
        run_dir=str(out),
        prompts_per_step=16,
        group_size=8,
        max_new_tokens=48,
        lr=1e-4,
        warmup_steps=10,
        teacher_url=url,
        weights_root=root,
        details_every=0,
        eval_every=eval_every,
        eval_problems=eval_n,
        progress=False,
    )
    started = time.perf_counter()
    with TeacherClient(url, timeout=300.0) as client:
        summary = toy.main(cfg, client)
    wall = time.perf_counter() - started
    rows = [json.loads(x) for x in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    s = summary["seconds_per_step"]
    return {
        "reward": [r["reward"] for r in rows],
        "eval": summary["eval_curve"],
        "seconds_per_step": {
            "generation": s["rollout"],
            "scoring": s["scoring"],
            "update": s["update"],
            "push": s["push"],
            "total": wall / steps,
        },
    }


def t_interval(x):
    x = np.asarray(x, dtype=float)
    half = 1.96 * x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
    return float(x.mean()), half


def wilson(p, n):
    z = 1.96
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return c - h, c + h


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--methods", nargs="+", default=["grpo", "hsd"])
    ap.add_argument("--trainers", nargs="+", default=["trl", "toy"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--eval-problems", type=int, default=200)
    ap.add_argument("--work-dir", default="/tmp/tokencredit-trl-curve")
    ap.add_argument("--out", default="docs/measured/trl_curve.json")
    ap.add_argument("--figure", default="docs/figures/trl_curve.png")
    a = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(a.work_dir)
    (work / "weights").mkdir(parents=True, exist_ok=True)
    env = {
        "TC_MODEL": str(toy.DEFAULT_MODEL),
        "TC_BACKEND": "hf",
        "TC_DEVICE": "cpu",
        "TC_DTYPE": "float32",
        "TC_WEIGHTS_ROOT": str(work / "weights"),
        "TC_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": "1",
    }
    result = {
        "command": "nice -n 10 python benchmarks/trl_curve.py "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(a).items()
        ),
        "runs": {},
        "eval_problems": a.eval_problems,
    }
    started = time.perf_counter()
    with ServerProcess(env=env, log_path=work / "server.log") as server:
        for method in a.methods:
            for trainer in a.trainers:
                fn = run_trl if trainer == "trl" else run_toy
                out = work / f"{trainer}-{method}"
                print(f"== {trainer} {method}", flush=True)
                r = fn(
                    method,
                    a.steps,
                    a.seed,
                    server.url,
                    str(work / "weights"),
                    out,
                    a.eval_every,
                    a.eval_problems,
                )
                result["runs"][f"{trainer}/{method}"] = r
                print(json.dumps({"eval": r["eval"], "s/step": r["seconds_per_step"]}), flush=True)
                Path(a.out).parent.mkdir(parents=True, exist_ok=True)
                Path(a.out).write_text(json.dumps(result, indent=1))
    result["wall_minutes"] = (time.perf_counter() - started) / 60
    Path(a.out).write_text(json.dumps(result, indent=1))
    report(result, a.figure)


def report(result, figure):
    runs = result["runs"]
    print(
        "| run | eval acc @0 | final eval acc [95% Wilson] | train reward, 2nd half [95%] | "
        "s/step gen | scoring | student lp | update | push | total |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        ev, rw, s = r["eval"], r["reward"], r["seconds_per_step"]
        lo, hi = wilson(ev[-1][1], result.get("eval_problems", 200))
        m, h = t_interval(rw[len(rw) // 2 :])
        print(
            f"| {name} | {ev[0][1]:.3f} | {ev[-1][1]:.3f} [{lo:.3f}, {hi:.3f}] | "
            f"{m:.3f} ± {h:.3f} | {s['generation']:.2f} | {s['scoring']:.2f} | "
            f"{s.get('student_logprobs', 0.0):.2f} | {s['update']:.2f} | {s['push']:.2f} | "
            f"{s['total']:.2f} |"
        )
    methods = sorted({k.split("/")[1] for k in runs})
    print("\n| method | TRL − toy train reward per step, paired on the same problems [95%] |")
    print("|---|---|")
    for m in methods:
        if f"trl/{m}" in runs and f"toy/{m}" in runs:
            a, b = runs[f"trl/{m}"]["reward"], runs[f"toy/{m}"]["reward"]
            n = min(len(a), len(b))
            d, h = t_interval(np.subtract(a[:n], b[:n]))
            print(f"| {m} | {d:+.3f} ± {h:.3f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in runs.items():
        rw = np.asarray(r["reward"])
        k = min(5, len(rw))
        smooth = np.convolve(rw, np.ones(k) / k, mode="valid")
        style = "-" if name.startswith("trl") else "--"
        axes[0].plot(range(k, len(rw) + 1), smooth, style, label=name)
        ev = np.asarray(r["eval"])
        axes[1].plot(ev[:, 0], ev[:, 1], style + "o", label=name)
    axes[0].set(xlabel="step", ylabel="train reward (5-step mean)", title="sampled accuracy")
    axes[1].set(xlabel="step", ylabel="greedy accuracy, 200 held-out", title="held-out")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(figure).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=90)


if __name__ == "__main__":
    main()
