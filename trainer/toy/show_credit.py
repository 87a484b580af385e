"""Per-token credit of HSD, AntiSD and AMR-SD on the same rollouts, drawn over the tokens.

    python -m trainer.toy.show_credit            # docs/figures/credit_tokens.{html,png}

Samples a batch from the initial policy (the embedded model), scores it through the service with
``return_details=True`` under ``hsd``, ``antisd``, ``amrsd`` (and ``opsd`` for the localisation
baseline), and draws, for a few failed rollouts that HSD paired with a successful peer, each
method's per-token ``signal`` over the decoded tokens (red: negative, blue: positive, each row
scaled by its own max |signal|; the box marks HSD's divergence position τ):

- HSD: u_t = log π(y_t | x, a*, peer) − log π(y_t | x)                     (§4.6)
- AntiSD: δ_t = ½(log 2 − softplus(u_t)), its own teacher context          (§4.7)
- AMR-SD: Δ_t ≥ 0, the amplification of A_i (0 when |Î| ≤ τ)              (§4.8)

It also measures, over ``--batches`` batches, the share of |signal| within ±8 tokens of τ for HSD,
for OPSD's u_t on the same rollouts around the same τ, and for a uniform |signal|
(``credit_mass.md``, and between the ``credit_mass`` markers of ``docs/toy.md``).
"""

from __future__ import annotations

import argparse
import html
import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

from trainer.toy import analysis
from trainer.toy.arith import random_problem
from trainer.toy.compare import replace_block
from trainer.toy.loop import (
    ANTISD_OPEN_GATE,
    REPO_ROOT,
    TRAIN_SEED_OFFSET,
    Config,
    model_path,
    request_groups,
    response_logprobs,
    sample_batch,
)

SHOWN = ("hsd", "antisd", "amrsd")
WINDOW = 8
# AntiSD's gate is closed (λ = 0) for its first warmup_steps calls; ANTISD_OPEN_GATE (past
# warm-up, h_warm = 0) keeps it open, so the figure shows δ_t at λ = lam_max.


def token_strings(tokenizer, ids: list[int]) -> list[str]:
    return [tokenizer.decode([i]) for i in ids]


def rgb(value: float, scale: float) -> tuple[float, float, float]:
    """White at 0, blue for positive, red for negative, saturating at |value| = scale."""
    x = 0.0 if scale <= 0 else max(-1.0, min(1.0, value / scale))
    if x >= 0:
        return (1 - 0.75 * x, 1 - 0.55 * x, 1.0)
    return (1.0, 1 + 0.6 * x, 1 + 0.7 * x)


def to_hex(c: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(255 * v):02x}" for v in c)


def render_html(examples: list[dict], path: Path) -> None:
    parts = [
        "<!doctype html><meta charset='utf-8'><title>Per-token credit</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        ".tok{font-family:monospace;white-space:pre;padding:2px 1px;margin:0 0 3px 0;"
        "display:inline-block;border:1px solid transparent}.tau{border:1px solid #000}"
        "td{vertical-align:top;padding:4px}</style>",
        "<h1>Per-token signal on failed rollouts (HSD, AntiSD, AMR-SD)</h1>",
        "<p>Blue: positive, red: negative; each row scaled by its own max |signal|. The boxed token "
        "is τ, where the rollout first differs from the successful peer HSD showed its teacher. "
        "Hover a token for its value.</p>",
    ]
    for ex in examples:
        parts.append(
            f"<h3>{html.escape(ex['question'])} — answer {ex['answer']}, reward {ex['reward']:.0f}"
            f", τ = {ex['tau']}</h3><table>"
        )
        for method in SHOWN:
            sig = ex["signals"][method]
            scale = float(np.abs(sig).max()) if len(sig) else 0.0
            spans = []
            for t, (tok, v) in enumerate(zip(ex["tokens"], sig)):
                cls = "tok tau" if t == ex["tau"] else "tok"
                spans.append(
                    f"<span class='{cls}' style='background:{to_hex(rgb(v, scale))}' "
                    f"title='t={t} {v:+.3f}'>{html.escape(tok)}</span>"
                )
            parts.append(
                f"<tr><td><b>{method}</b><br><small>max |s| {scale:.2f}</small></td>"
                f"<td>{''.join(spans)}</td></tr>"
            )
        parts.append(
            f"<tr><td><i>peer</i></td><td><code>{html.escape(ex['peer_text'])}</code></td></tr>"
        )
        parts.append("</table>")
    path.write_text("\n".join(parts))


def render_png(examples: list[dict], path: Path, per_line: int = 18) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    lines_per_row = [
        max(1, -(-len(ex["tokens"]) // per_line)) for ex in examples
    ]  # ceil(len / per_line)
    height_units = sum(1.2 + len(SHOWN) * n * 1.0 + 0.4 for n in lines_per_row)
    fig = plt.figure(figsize=(13, 0.42 * height_units + 0.6), dpi=110)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, per_line + 2.4)
    ax.set_ylim(height_units + 0.5, 0)
    ax.axis("off")
    y = 0.6
    for ex, n_lines in zip(examples, lines_per_row):
        ax.text(
            0.05,
            y,
            f"{ex['question']}   answer {ex['answer']}   reward {ex['reward']:.0f}   "
            f"τ = {ex['tau']} (boxed)",
            fontsize=10,
            weight="bold",
            va="center",
        )
        y += 0.9
        for method in SHOWN:
            sig = ex["signals"][method]
            scale = float(np.abs(sig).max()) if len(sig) else 0.0
            ax.text(0.05, y + 0.5, method, fontsize=9, va="center", weight="bold")
            ax.text(0.05, y + 0.85, f"max {scale:.2f}", fontsize=6.5, va="center", color="0.35")
            for t, (tok, v) in enumerate(zip(ex["tokens"], sig)):
                line, col = divmod(t, per_line)
                x0, y0 = 1.9 + col * 1.0 * (per_line + 0.4) / per_line, y + line
                edge = "black" if t == ex["tau"] else "0.85"
                ax.add_patch(
                    Rectangle(
                        (x0, y0 + 0.08),
                        0.98,
                        0.84,
                        facecolor=rgb(v, scale),
                        edgecolor=edge,
                        linewidth=1.6 if t == ex["tau"] else 0.4,
                    )
                )
                label = tok.replace(" ", "␣").replace("\n", "⏎").replace("$", r"\$") or "∅"
                ax.text(
                    x0 + 0.49,
                    y0 + 0.5,
                    label,
                    fontsize=7.5,
                    ha="center",
                    va="center",
                    family="monospace",
                )
            y += n_lines
        y += 0.7
    fig.savefig(path)
    plt.close(fig)


def collect(
    client, model, tokenizer, cfg: Config, batches: int, seed: int
) -> tuple[list[dict], dict]:
    import random

    rng = random.Random(TRAIN_SEED_OFFSET + seed)
    G = cfg.group_size
    examples: list[dict] = []
    mass = {m: analysis.DivergenceMass(shares=[]) for m in ("hsd", "opsd", "hsd1", "opsd1")}
    nonzero = {m: [0, 0] for m in SHOWN}
    for k in range(batches):
        torch.manual_seed(seed * 7919 + k)
        problems = [random_problem(rng) for _ in range(cfg.prompts_per_step)]
        batch = sample_batch(model, tokenizer, problems, cfg)
        with torch.no_grad():
            old_lp = response_logprobs(model, batch)
        groups = request_groups(batch, old_lp, G)
        res = {
            m: client.advantages(
                m,
                groups,
                step=0,
                seed=seed + k,
                return_details=True,
                state=ANTISD_OPEN_GATE if m == "antisd" else None,
            )
            for m in (*SHOWN, "opsd")
        }
        hsd = analysis.hsd_divergence_mass(batch.response_ids_B, batch.rewards_B, res["hsd"], G)
        opsd_signals = [r.details.signal for g in res["opsd"].groups for r in g]
        opsd = analysis.hsd_divergence_mass(
            batch.response_ids_B, batch.rewards_B, res["hsd"], G, signals_B=opsd_signals
        )
        mass["hsd"], mass["opsd"] = mass["hsd"].add(hsd), mass["opsd"].add(opsd)
        ids, rw = batch.response_ids_B, batch.rewards_B
        hsd1 = analysis.hsd_divergence_mass(ids, rw, res["hsd"], G, window=1)
        opsd1 = analysis.hsd_divergence_mass(
            ids, rw, res["hsd"], G, window=1, signals_B=opsd_signals
        )
        mass["hsd1"], mass["opsd1"] = mass["hsd1"].add(hsd1), mass["opsd1"].add(opsd1)
        flat = {m: [r for g in res[m].groups for r in g] for m in res}
        for m in SHOWN:
            for r in flat[m]:
                nonzero[m][0] += int((np.asarray(r.details.signal) != 0).sum())
                nonzero[m][1] += len(r.details.signal)
        for b, credit in enumerate(flat["hsd"]):
            d = credit.details
            if d.peer_index is None or batch.rewards_B[b] >= 0.5 or len(examples) >= 64:
                continue
            peer_b = (b // G) * G + d.peer_index
            tau = analysis.first_divergence(batch.response_ids_B[b], batch.response_ids_B[peer_b])
            if tau >= len(batch.response_ids_B[b]):
                continue
            p = problems[b // G]
            examples.append(
                {
                    "question": p.question,
                    "answer": p.answer,
                    "reward": float(batch.rewards_B[b]),
                    "tau": tau,
                    "tokens": token_strings(tokenizer, batch.response_ids_B[b]),
                    "peer_text": batch.texts_B[peer_b],
                    "signals": {m: np.asarray(flat[m][b].details.signal) for m in SHOWN},
                    "hsd_share": analysis.window_mass(d.signal, tau, WINDOW),
                }
            )
    mass["nonzero"] = {m: n / max(t, 1) for m, (n, t) in nonzero.items()}
    return examples, mass


def main() -> None:
    ap = argparse.ArgumentParser(
        prog="python -m trainer.toy.show_credit",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--model", default="")
    ap.add_argument("--teacher-url", default="", help="a running server holding the same model")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--batches", type=int, default=4, help="batches for the mass measurement")
    ap.add_argument("--examples", type=int, default=3)
    ap.add_argument("--out-dir", default=str(REPO_ROOT / "docs" / "figures"))
    ap.add_argument("--doc", default=str(REPO_ROOT / "docs" / "toy.md"), help="markdown to update")
    args = ap.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from client import TeacherClient
    from client.launcher import ServerProcess

    torch.set_num_threads(1)
    cfg = Config(
        method="hsd", model=args.model, prompts_per_step=args.prompts, group_size=args.group_size
    )
    path = model_path(cfg)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        url = args.teacher_url
        if not url:
            env = {
                "TC_MODEL": path,
                "TC_DEVICE": "cpu",
                "TC_DTYPE": "float32",
                "TC_LOG_LEVEL": "warning",
                "OMP_NUM_THREADS": "1",
            }
            url = stack.enter_context(ServerProcess(env=env)).url
        client = stack.enter_context(TeacherClient(url, timeout=600.0))
        examples, mass = collect(client, model, tokenizer, cfg, args.batches, args.seed)

    # Show the examples whose HSD signal is most concentrated at τ and the least, plus a middle one.
    examples.sort(key=lambda e: -(e["hsd_share"][0] / max(e["hsd_share"][1], 1e-12)))
    if len(examples) > args.examples:
        idx = np.linspace(0, len(examples) - 1, args.examples).round().astype(int)
        shown = [examples[i] for i in idx]
    else:
        shown = examples
    if shown:
        render_html(shown, out / "credit_tokens.html")
        render_png(shown, out / "credit_tokens.png")
    h, o = mass["hsd"], mass["opsd"]
    lines = [
        f"`python -m trainer.toy.show_credit {' '.join(sys.argv[1:])}`".replace(" `", "`")
        + f" (initial policy `{os.path.relpath(path, REPO_ROOT)}`): {h.rollouts} failed rollouts with a successful peer.",
        "",
        "| signal | share of \\|signal\\| within ±8 tokens of τ |",
        "|---|---|",
        f"| HSD u_t (peer + a*) | {h.share:.1%} |",
        f"| OPSD u_t (reference solution), same rollouts and τ | {o.share:.1%} |",
        f"| uniform \\|signal\\| over each response | {h.uniform_share:.1%} |",
        "| paper (HSD, Qwen3, long responses) | about 55% |",
        "",
        "Tighter window, ±1 token of τ: "
        f"HSD {mass['hsd1'].share:.1%}, OPSD {mass['opsd1'].share:.1%}, "
        f"uniform {mass['hsd1'].uniform_share:.1%}.",
        "",
        "Share of tokens with a nonzero signal (all rollouts): "
        + ", ".join(f"{m} {v:.1%}" for m, v in mass["nonzero"].items())
        + ".",
    ]
    if h.shares:
        lines.append(
            f"\nPer-rollout HSD share: median {np.median(h.shares):.1%}, "
            f"quartiles {np.percentile(h.shares, 25):.1%}–{np.percentile(h.shares, 75):.1%}."
        )
    text = "\n".join(lines) + "\n"
    (out / "credit_mass.md").write_text(text)
    replace_block(Path(args.doc), "credit_mass", text.rstrip())
    (out / "credit_mass.json").write_text(
        json.dumps(
            {
                "rollouts": h.rollouts,
                "hsd_share": h.share,
                "opsd_share_at_hsd_tau": o.share,
                "uniform_share": h.uniform_share,
                "window1": {
                    "hsd": mass["hsd1"].share,
                    "opsd": mass["opsd1"].share,
                    "uniform": mass["hsd1"].uniform_share,
                },
                "nonzero_signal_share": mass["nonzero"],
                "hsd_shares": h.shares,
            },
            indent=2,
        )
    )
    print(text)
    print(f"{len(shown)} examples drawn to {out / 'credit_tokens.png'} and .html")


if __name__ == "__main__":
    main()
