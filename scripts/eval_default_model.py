"""Measure the embedded default model: student accuracy, teacher-context log-prob gains, reflections.

    python3 scripts/eval_default_model.py [--model server/default_model] [--n 500]

Three measurements, all on held-out problems (seed ``EVAL_SEED``; training uses ``--seed`` 0 and the
early-stop dev set ``DEV_SEED``):

1. Greedy accuracy under the student prompt (``STUDENT`` through the chat template).
2. Teacher-minus-student log-prob on the reference solution's tokens, per teacher context::

       u_t = log p(y_t | teacher context, y_<t) - log p(y_t | student prompt, y_<t)

   averaged over all reference-solution tokens (``<|im_end|>`` excluded) of all problems; also the
   per-solution sum, and, for OPSD, u_t on the model's own greedy rollouts split by correctness.
3. Meta-Reflection: the rate of well-formed ``<hint>``/``<critique>`` answers (exactly one tag pair
   of the requested kind) and the rate that leak the final answer, greedy and at temperature 0.7.
"""

from __future__ import annotations

import os

# Threads that sleep instead of spinning at OpenMP barriers: on a busy 2-core machine spinning
# threads made each step about 7x slower (measured); the numerics do not change.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import random
import re
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from trainer.toy import contexts as C  # noqa: E402
from trainer.toy.arith import Problem, generate_problems, is_correct, slipped_solution  # noqa: E402

EVAL_SEED = 10_000


@torch.no_grad()
def generate(
    model,
    tokenizer,
    users: list[str],
    max_new_tokens: int = 48,
    batch: int = 128,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """Completions of chat prompts (greedy if ``temperature == 0``), left-padded, stop at eos."""
    out, side = [], tokenizer.padding_side
    tokenizer.padding_side = "left"
    sampling = {"do_sample": temperature > 0, "top_k": None, "top_p": None}
    if temperature > 0:
        sampling["temperature"] = temperature
        torch.manual_seed(seed)
    try:
        for i in range(0, len(users), batch):
            prompts = [C.chat_prompt(tokenizer, u) for u in users[i : i + batch]]
            enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            gen = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
            new = gen[:, enc["input_ids"].shape[1] :]
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def student_accuracy(model, tokenizer, problems: list[Problem]) -> tuple[float, list[str]]:
    texts = generate(model, tokenizer, [C.student_user(p) for p in problems])
    return sum(is_correct(t, p.answer) for t, p in zip(texts, problems)) / len(problems), texts


@torch.no_grad()
def target_logprobs(
    model, tokenizer, users: list[str], target_ids: list[list[int]], batch: int = 64
) -> list[torch.Tensor]:
    """Per-token ``log p(target_t | chat prompt(user), target_<t)``, one ``(L_i,)`` tensor per row.

    Rows are right-padded (no attention mask needed: a causal model never looks at later pads).
    """
    p_ids = tokenizer([C.chat_prompt(tokenizer, u) for u in users], add_special_tokens=False)[
        "input_ids"
    ]
    out = []
    for i in range(0, len(users), batch):
        rows = [p + t for p, t in zip(p_ids[i : i + batch], target_ids[i : i + batch])]
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
        for b, r in enumerate(rows):
            ids[b, : len(r)] = torch.tensor(r)
        logits = model(input_ids=ids).logits.float()  # (B, T, V)
        for b, (p, t) in enumerate(zip(p_ids[i : i + batch], target_ids[i : i + batch])):
            pos = torch.arange(len(p) - 1, len(p) + len(t) - 1)  # logits at pos predict pos + 1
            logp = torch.log_softmax(logits[b, pos], dim=-1)  # (L, V)
            out.append(logp.gather(-1, torch.tensor(t)[:, None])[:, 0])
    return out


def teacher_gaps(model, tokenizer, problems: list[Problem]) -> dict[str, dict[str, float]]:
    """Per teacher context: mean u_t per reference token, mean per-solution sum, share of sums > 0."""
    targets = tokenizer([p.solution for p in problems], add_special_tokens=False)["input_ids"]
    student = target_logprobs(model, tokenizer, [C.student_user(p) for p in problems], targets)
    n_tok = sum(len(t) for t in targets)
    rows = {
        "student": {
            "mean_u_per_token": 0.0,
            "mean_u_per_solution": 0.0,
            "frac_positive": 0.0,
            "mean_logp_per_token": float(sum(s.sum() for s in student) / n_tok),
        }
    }
    for name, make in C.TEACHER_CONTEXTS.items():
        teacher = target_logprobs(model, tokenizer, [make(p) for p in problems], targets)
        sums = [float((t - s).sum()) for t, s in zip(teacher, student)]
        rows[name] = {
            "mean_u_per_token": sum(sums) / n_tok,
            "mean_u_per_solution": sum(sums) / len(sums),
            "frac_positive": sum(x > 0 for x in sums) / len(sums),
            "mean_logp_per_token": float(sum(t.sum() for t in teacher) / n_tok),
        }
    return rows


def rollout_gaps(model, tokenizer, problems: list[Problem], texts: list[str]) -> dict[str, float]:
    """OPSD u_t on the model's own greedy rollouts, token-mean, split by correctness."""
    eos = tokenizer.eos_token_id
    targets = [[*t, eos] for t in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    student = target_logprobs(model, tokenizer, [C.student_user(p) for p in problems], targets)
    teacher = target_logprobs(model, tokenizer, [C.opsd_user(p) for p in problems], targets)
    acc: dict[str, list[float]] = {"correct": [0.0, 0], "wrong": [0.0, 0]}
    for p, text, t, s in zip(problems, texts, teacher, student):
        key = "correct" if is_correct(text, p.answer) else "wrong"
        acc[key][0] += float((t - s).sum())
        acc[key][1] += len(t)
    return {k: (v[0] / v[1] if v[1] else float("nan")) for k, v in acc.items()}


_TAG = re.compile(r"\s*<(hint|critique)>([^<>]+)</\1>\s*")


def reflection_rates(
    model, tokenizer, problems: list[Problem], temperature: float, seed: int = 0
) -> dict[str, float]:
    """Well-formed-tag rate and answer-leak rate of Meta-Reflections (half hints, half critiques)."""
    rng = random.Random(seed)
    users, kinds = [], []
    for i, p in enumerate(problems):
        correct = i % 2 == 0
        attempt = p.solution if correct else slipped_solution(p, rng).text
        peer = p.solution if (not correct and i % 4 == 1) else None
        users.append(C.reflection_user(p, attempt, correct, peer=peer))
        kinds.append("hint" if correct else "critique")
    texts = generate(model, tokenizer, users, max_new_tokens=64, temperature=temperature, seed=seed)
    ok = leak = 0
    for text, kind, p in zip(texts, kinds, problems):
        m = _TAG.fullmatch(text)
        if m and m.group(1) == kind:
            ok += 1
            leak += re.search(rf"(?<!\d){re.escape(p.answer)}(?!\d)", m.group(2)) is not None
    return {"well_formed": ok / len(texts), "leak": leak / max(ok, 1), "example": texts[1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "server" / "default_model"))
    ap.add_argument("--n", type=int, default=500, help="held-out problems")
    ap.add_argument("--n-reflect", type=int, default=200, help="reflection prompts")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    problems = generate_problems(args.n, seed=EVAL_SEED)

    acc, texts = student_accuracy(model, tokenizer, problems)
    by_n = {}
    for n_ops in (2, 3):
        sub = [(t, p) for t, p in zip(texts, problems) if len(p.operands) == n_ops]
        by_n[n_ops] = (sum(is_correct(t, p.answer) for t, p in sub) / max(len(sub), 1), len(sub))
    print(
        f"Greedy accuracy, student prompt, {args.n} held-out problems (seed {EVAL_SEED}): {acc:.3f}"
    )
    for n_ops, (a, n) in by_n.items():
        print(f"  {n_ops} operands: {a:.3f} (n={n})")

    print("\nTeacher-minus-student log-prob on reference-solution tokens (nats):")
    print("| context | mean u / token | mean u / solution | share > 0 | mean log p / token |")
    print("|---|---|---|---|---|")
    for name, r in teacher_gaps(model, tokenizer, problems).items():
        print(
            f"| {name} | {r['mean_u_per_token']:+.3f} | {r['mean_u_per_solution']:+.2f} | "
            f"{r['frac_positive']:.2f} | {r['mean_logp_per_token']:.3f} |"
        )
    rg = rollout_gaps(model, tokenizer, problems, texts)
    print(
        f"\nOPSD u / token on own greedy rollouts: correct {rg['correct']:+.3f}, "
        f"wrong {rg['wrong']:+.3f}"
    )

    reflect = generate_problems(args.n_reflect, seed=EVAL_SEED + 1)
    print(f"\nMeta-Reflection, {args.n_reflect} prompts (half hint, half critique):")
    for temp in (0.0, 0.7):
        r = reflection_rates(model, tokenizer, reflect, temperature=temp)
        print(
            f"  T={temp}: well-formed {r['well_formed']:.3f}, leaks answer {r['leak']:.3f}"
            f"  e.g. {r['example']!r}"
        )
    print(f"\n({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
