"""Run every method through the toy loop with the same steps and seeds, and compare them.

    python -m trainer.toy.compare            # default preset: 9 methods x 1 seed x 30 steps
    python -m trainer.toy.compare --quick    # a few minutes: fewer steps, prompts and eval problems

One server (hf backend) is started for all runs and shared; every run that needs a teacher first
pushes the initial weights, so each starts from the same teacher. Writes, under ``--out-dir``
(default ``docs/figures``), ``toy_compare{_quick}.png`` (held-out greedy accuracy vs step),
``toy_compare{_quick}.md`` (the table) and ``toy_compare{_quick}.json`` (all numbers), and, when
``docs/toy.md`` has the markers ``<!-- compare{_quick}:begin -->`` / ``<!-- compare{_quick}:end -->``,
puts the table between them.

Columns: held-out greedy accuracy at step 0 and at the end (mean over seeds), the first evaluated
step at which a method's mean accuracy reaches GRPO's final mean accuracy ("—": never within the
run), mean training reward, and wall time per step split into rollout (sampling + verification),
scoring (the ``/v1/advantages`` round trip) and update (forward/backward/AdamW + weight pushes).
With 1–3 seeds and 200 evaluation problems the noise is about ±0.03 (docs/toy.md): read small
differences as ties.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np

from trainer.toy.loop import METHODS, REPO_ROOT, Config, main, model_path

PRESETS = {
    # ~20-30 min on 2 shared cores with the embedded model.
    "default": {
        "steps": 30,
        "prompts_per_step": 16,
        "group_size": 8,
        "eval_every": 10,
        "eval_problems": 200,
    },
    # A few minutes: a smoke comparison, differences are noise.
    "quick": {
        "steps": 12,
        "prompts_per_step": 8,
        "group_size": 8,
        "eval_every": 4,
        "eval_problems": 100,
    },
}


# Methods whose Â does not contain GRPO's A_i (Â = u_t or a KL term): a sign check against A_i
# says nothing about them.
REPLACES_A = frozenset({"opd", "opsd", "sdpo", "hsd"})


def steps_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    """First evaluated step whose accuracy is >= ``target`` (step 0 counts), else None."""
    for step, acc in curve:
        if acc >= target - 1e-12:
            return step
    return None


def mean_curve(curves: list[list[tuple[int, float]]]) -> list[tuple[int, float]]:
    steps = [s for s, _ in curves[0]]
    return [(s, float(np.mean([c[i][1] for c in curves]))) for i, s in enumerate(steps)]


def aggregate(summaries: dict[str, list[dict]]) -> dict[str, dict]:
    rows = {}
    for method, runs in summaries.items():
        curve = mean_curve([r["eval_curve"] for r in runs])
        finals = [r["final_eval_accuracy"] for r in runs]
        sec = {
            k: float(np.mean([r["seconds_per_step"][k] for r in runs]))
            for k in runs[0]["seconds_per_step"]
        }
        row = {
            "curve": curve,
            "initial": curve[0][1],
            "final": float(np.mean(finals)),
            "final_std": float(np.std(finals)) if len(finals) > 1 else None,
            "mean_train_reward": float(np.mean([r["mean_train_reward"] for r in runs])),
            "seconds_per_step": sec,
            "sign_flips": sum(r["sign_flips"] for r in runs),
            "sign_tokens": sum(r["sign_tokens"] for r in runs),
        }
        if "hsd_window_share" in runs[0]:
            row["hsd_window_share"] = float(np.mean([r["hsd_window_share"] for r in runs]))
            row["hsd_uniform_share"] = float(np.mean([r["hsd_uniform_share"] for r in runs]))
            row["hsd_rollouts"] = sum(r["hsd_rollouts"] for r in runs)
        rows[method] = row
    if "grpo" in rows:
        target = rows["grpo"]["final"]
        for row in rows.values():
            row["steps_to_grpo_final"] = steps_to_reach(row["curve"], target)
    return rows


def table(rows: dict[str, dict], seeds: list[int]) -> str:
    n = len(seeds)
    acc_head = "final acc" + (f" (mean ± sd, {n} seeds)" if n > 1 else "")
    lines = [
        f"| method | acc @0 | {acc_head} | Δ | steps to GRPO final | train reward | "
        "s/step rollout | scoring | update | sign flips |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in rows.items():
        final = f"{r['final']:.3f}" + (
            f" ± {r['final_std']:.3f}" if r["final_std"] is not None else ""
        )
        reach = r.get("steps_to_grpo_final")
        sec = r["seconds_per_step"]
        flips = f"{r['sign_flips'] / max(r['sign_tokens'], 1):.1%}"
        if method in REPLACES_A:
            flips = "n/a"
        lines.append(
            f"| `{method}` | {r['initial']:.3f} | {final} | {r['final'] - r['initial']:+.3f} | "
            f"{'—' if reach is None else reach} | {r['mean_train_reward']:.3f} | "
            f"{sec['rollout']:.2f} | {sec['scoring']:.2f} | {sec['update'] + sec['push']:.2f} | "
            f"{flips} |"
        )
    return "\n".join(lines)


def plot(rows: dict[str, dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for method, r in rows.items():
        steps, accs = zip(*r["curve"])
        style = {"color": "black", "linewidth": 2.4} if method == "grpo" else {"linewidth": 1.4}
        ax.plot(steps, accs, marker="o", markersize=3, label=method, **style)
    if "grpo" in rows:
        final = rows["grpo"]["final"]
        ax.axhline(final, color="black", linestyle=":", linewidth=0.8)
        # ±0.02-0.03 evaluation noise on a few hundred problems, one seed (docs/toy.md).
        ax.axhspan(final - 0.03, final + 0.03, color="0.5", alpha=0.12, label="GRPO final ± 0.03")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out greedy accuracy")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(ncol=3, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def replace_block(doc: Path, marker: str, text: str) -> bool:
    if not doc.exists():
        return False
    src = doc.read_text()
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    if begin not in src or end not in src:
        return False
    head, rest = src.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
    return True


def run(args: argparse.Namespace) -> dict[str, dict]:
    preset = dict(PRESETS["quick" if args.quick else "default"])
    for key in preset:
        value = getattr(args, key)
        if value is not None:
            preset[key] = value
    suffix = "_quick" if args.quick else ""
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="tokencredit-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    base = Config(method="grpo", model=args.model, progress=not args.no_progress, **preset)

    from client import TeacherClient
    from client.launcher import ServerProcess

    summaries: dict[str, list[dict]] = {}
    started = time.perf_counter()
    with ExitStack() as stack:
        url, weights_root = args.teacher_url, args.weights_root
        if not url:
            weights_root = str(work / "weights")
            Path(weights_root).mkdir(exist_ok=True)
            env = {
                "TC_MODEL": model_path(base),
                "TC_BACKEND": "hf",
                "TC_DEVICE": "cpu",
                "TC_DTYPE": "float32",
                "TC_WEIGHTS_ROOT": weights_root,
                "TC_LOG_LEVEL": "warning",
                "OMP_NUM_THREADS": "1",
                "MKL_NUM_THREADS": "1",
            }
            proc = stack.enter_context(ServerProcess(env=env, log_path=work / "server.log"))
            url = proc.url
        client = stack.enter_context(TeacherClient(url, timeout=600.0))
        for method in args.methods:
            for seed in args.seeds:
                cfg = replace(
                    base,
                    method=method,
                    seed=seed,
                    run_dir=str(work / f"{method}-s{seed}"),
                    weights_root=weights_root or "",
                )
                t0 = time.perf_counter()
                summary = main(cfg, client=client)
                summaries.setdefault(method, []).append(summary)
                print(
                    f"{method} seed {seed}: acc {summary['initial_eval_accuracy']:.3f} -> "
                    f"{summary['final_eval_accuracy']:.3f} in {time.perf_counter() - t0:.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
    wall = time.perf_counter() - started

    rows = aggregate(summaries)
    cmd = "python -m trainer.toy.compare" + (" --quick" if args.quick else "")
    extra = " ".join(sys.argv[1:]).replace("--quick", "").strip()
    if extra:
        cmd += " " + extra
    info = (
        f"`{cmd}` — model `{os.path.relpath(model_path(base), REPO_ROOT)}`, "
        f"{preset['steps']} steps × {preset['prompts_per_step']} prompts × "
        f"{preset['group_size']} samples, seeds {args.seeds}, lr {base.lr}, "
        f"{preset['eval_problems']} held-out problems evaluated every {preset['eval_every']} steps; "
        f"total wall time {wall / 60:.1f} min."
    )
    md = [info, "", table(rows, args.seeds), ""]
    if "hsd" in rows and "hsd_window_share" in rows["hsd"]:
        r = rows["hsd"]
        md.append(
            f"HSD: share of |signal| within ±8 tokens of the divergence from the peer, pooled over "
            f"{r['hsd_rollouts']} failed rollouts with a peer: **{r['hsd_window_share']:.1%}** "
            f"(a uniform |signal| would give {r['hsd_uniform_share']:.1%}; paper: about 55%)."
        )
    if "amrsd" in rows:
        r = rows["amrsd"]
        md.append(
            f"AMR-SD sign check: {r['sign_flips']} of {r['sign_tokens']} tokens have "
            f"sign(Â) ≠ sign(A_i) with Â ≠ 0."
        )
    text = "\n".join(md).rstrip() + "\n"
    (out_dir / f"toy_compare{suffix}.md").write_text(text)
    (out_dir / f"toy_compare{suffix}.json").write_text(
        json.dumps(
            {
                "command": cmd,
                "preset": preset,
                "seeds": args.seeds,
                "wall_seconds": wall,
                "rows": rows,
                "runs": summaries,
            },
            indent=2,
            default=str,
        )
    )
    title = (
        f"Toy arithmetic RL, {preset['prompts_per_step']}×{preset['group_size']} rollouts/step, "
        f"seeds {args.seeds}"
    )
    plot(rows, out_dir / f"toy_compare{suffix}.png", title)
    replace_block(Path(args.doc), f"compare{suffix}", text)
    print(text)
    return rows


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m trainer.toy.compare",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="a few minutes; differences are noise")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--steps", type=int)
    ap.add_argument("--prompts-per-step", type=int)
    ap.add_argument("--group-size", type=int)
    ap.add_argument("--eval-every", type=int)
    ap.add_argument("--eval-problems", type=int)
    ap.add_argument("--model", default="", help="initial policy folder (default: embedded model)")
    ap.add_argument(
        "--teacher-url", default="", help="use a running server instead of starting one"
    )
    ap.add_argument("--weights-root", default="", help="that server's TC_WEIGHTS_ROOT, locally")
    ap.add_argument("--out-dir", default=str(REPO_ROOT / "docs" / "figures"))
    ap.add_argument("--doc", default=str(REPO_ROOT / "docs" / "toy.md"))
    ap.add_argument("--work-dir", default="", help="run folders (default: a fresh /tmp folder)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


if __name__ == "__main__":
    args = build_parser().parse_args()
    if "grpo" not in args.methods:
        args.methods = ["grpo", *args.methods]
    run(args)
