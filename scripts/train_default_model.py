"""Train the embedded default model: a tiny Qwen3 that does multi-step arithmetic, on CPU in minutes.

    python3 scripts/train_default_model.py            # writes server/default_model/

What it builds, top to bottom:

1. A byte-level BPE tokenizer (``tokenizers``), digits split one per token, trained on the toy task
   rendered in every prompt form of ``proto/prompts.py``; wrapped as ``PreTrainedTokenizerFast``
   with a ChatML chat template, ``<|im_end|>`` as eos and ``<|endoftext|>`` as pad.
2. A ``Qwen3Config`` model small enough to commit (a few MB of safetensors).
3. Supervised training (AdamW, warmup then cosine, loss on assistant tokens only) on a seeded,
   endless mix of examples (``MIX``): the plain student prompt, every method's teacher context
   followed by the correct worked solution (so privileged context really moves the predictions), and
   Meta-Reflection prompts answered with a ``<hint>``/``<critique>``.
4. Early stop: every ``--eval-every`` steps, greedy accuracy on a held-out dev set under the student
   prompt; training stops once it reaches ``--stop-acc`` so the model is *partly* trained (RL needs
   room to improve). Everything is seeded; on the same machine two runs give the same weights.

The held-out problems of ``scripts/eval_default_model.py`` use another seed than both the training
stream and this dev set.
"""

from __future__ import annotations

import os

# Threads that sleep instead of spinning at OpenMP barriers: on a busy 2-core machine spinning
# threads made each step about 7x slower (measured); the numerics do not change.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    PreTrainedTokenizerFast,
    Qwen3Config,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eval_default_model import student_accuracy, teacher_gaps  # noqa: E402

from trainer.toy import contexts as C  # noqa: E402
from trainer.toy.arith import Problem, generate_problems, random_problem, slipped_solution  # noqa: E402

# ChatML, as Qwen uses it (without the thinking machinery). Jinja reads '\n' inside its strings.
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

DEV_SEED = 20_000  # early-stop dev set; the training stream uses --seed, eval uses 10_000

# Training mix: example kind -> weight. Plain student examples are a minority on purpose: the
# arithmetic is learnt mostly where the answer is not in the context (plain, RLSD/HSD fallback,
# SDPO feedback-only, AMR-SD), the copying where it is (OPSD, SDPO/HSD peer, AntiSD).
MIX = {
    "student": 0.20,
    "opsd": 0.10,
    "sdpo_peer": 0.06,
    "sdpo_feedback": 0.06,
    "rlsd": 0.10,
    "hsd_peer": 0.06,
    "hsd_fallback": 0.06,
    "antisd": 0.06,
    "amrsd": 0.14,
    "reflection": 0.16,
}


# ---- Examples ----------------------------------------------------------------------------------


def make_example(kind: str, p: Problem, rng: random.Random) -> tuple[str, str]:
    """One ``(user message, assistant target)`` pair of the given kind for problem ``p``."""
    slip = slipped_solution(p, rng)
    feedback = C.feedback_text(slip.answer, rng)
    if kind == "student":
        return C.student_user(p), p.solution
    if kind == "opsd":
        return C.opsd_user(p), p.solution
    if kind == "sdpo_peer":  # a successful peer; half the time also feedback on the own attempt
        fb = feedback if rng.random() < 0.5 else None
        return C.sdpo_user(p, peer=p.solution, feedback=fb), p.solution
    if kind == "sdpo_feedback":
        return C.sdpo_user(p, feedback=feedback), p.solution
    if kind == "rlsd":
        return C.rlsd_user(p), p.solution
    if kind == "hsd_peer":
        return C.hsd_user(p, peer=p.solution), p.solution
    if kind == "hsd_fallback":
        return C.hsd_user(p), p.solution
    if kind == "antisd":
        return C.antisd_user(p, grade=rng.choice(["correct", "correct", "incorrect"])), p.solution
    if kind == "amrsd":
        if rng.random() < 0.5:
            return C.amrsd_user(p, "hint", C.hint_text(p, rng)), p.solution
        return C.amrsd_user(p, "critique", C.critique_text(p, slip, rng)), p.solution
    if kind == "reflection":
        correct = rng.random() < 0.5
        peer = p.solution if rng.random() < (0.3 if correct else 0.5) else None
        fb = None if correct or rng.random() < 0.7 else feedback
        user = C.reflection_user(
            p, p.solution if correct else slip.text, correct, peer=peer, feedback=fb
        )
        if correct:
            return user, f"<hint>{C.hint_text(p, rng)}</hint>"
        return user, f"<critique>{C.critique_text(p, slip, rng)}</critique>"
    raise ValueError(f"unknown example kind {kind!r}")


def sample_kind(rng: random.Random) -> str:
    return rng.choices(list(MIX), weights=list(MIX.values()))[0]


# ---- Tokenizer ---------------------------------------------------------------------------------


def tokenizer_corpus(seed: int, n: int = 3000) -> list[str]:
    """Every example kind rendered as chat text (role words included, special markers left out)."""
    rng = random.Random(seed)
    texts = []
    for kind in MIX:
        for _ in range(n // len(MIX)):
            user, target = make_example(kind, random_problem(rng), rng)
            texts.append(f"system\nuser\n{user}\nassistant\n{target}\n")
    return texts


def train_tokenizer(vocab_size: int, seed: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


# ---- Batches -----------------------------------------------------------------------------------


def encode_examples(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """``(ids, n_prompt)`` per pair: chat prompt, then target + ``<|im_end|>``."""
    prompts = [C.chat_prompt(tokenizer, user) for user, _ in pairs]
    p_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]
    t_ids = tokenizer([t for _, t in pairs], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(p + t + [eos], len(p)) for p, t in zip(p_ids, t_ids)]


def collate(
    examples: list[tuple[list[int], int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``labels`` (-100 on prompt and padding), both ``(B, T)``.

    Right padding needs no attention mask for a causal model: pads come after every real token.
    """
    T = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), T), -100, dtype=torch.long)
    for b, (ids, n_prompt) in enumerate(examples):
        input_ids[b, : len(ids)] = torch.tensor(ids)
        labels[b, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return input_ids, labels


def batch_stream(tokenizer, rng: random.Random, batch_size: int, pool: int = 8):
    """Endless batches; ``pool`` batches at a time are sorted by length to cut padding, then shuffled."""
    while True:
        pairs = []
        for _ in range(batch_size * pool):
            pairs.append(make_example(sample_kind(rng), random_problem(rng), rng))
        examples = sorted(encode_examples(tokenizer, pairs), key=lambda e: len(e[0]))
        batches = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        rng.shuffle(batches)
        yield from (collate(b, tokenizer.pad_token_id) for b in batches)


# ---- Main --------------------------------------------------------------------------------------


def lr_at(step: int, max_steps: int, lr: float, warmup: int) -> float:
    """Linear warmup to ``lr``, then cosine to ``lr / 10`` at ``max_steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, max_steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default="server/default_model", help="relative to the repo root")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab-size", type=int, default=640)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4, help="head_dim = hidden / heads")
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=384)
    ap.add_argument("--max-steps", type=int, default=2500)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--dev-size", type=int, default=200)
    ap.add_argument("--stop-acc", type=float, default=0.3, help="stop once dev accuracy >= this")
    ap.add_argument(
        "--mix", default="", help="override MIX weights, e.g. student=0.3,reflection=0.1"
    )
    ap.add_argument(
        "--max-minutes",
        type=float,
        default=0.0,
        help="wall-clock stop, 0 = none (not reproducible)",
    )
    args = ap.parse_args()

    for item in filter(None, args.mix.split(",")):
        kind, weight = item.split("=")
        assert kind in MIX, f"unknown mix kind {kind!r}; known: {list(MIX)}"
        MIX[kind] = float(weight)
    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    t0 = time.time()

    tokenizer = train_tokenizer(args.vocab_size, args.seed)
    print(f"tokenizer: vocab {len(tokenizer)} ({time.time() - t0:.1f}s)", flush=True)

    assert args.hidden % args.heads == 0, "hidden must be a multiple of heads"
    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        max_position_embeddings=1024,
        rope_theta=10_000.0,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = AutoModelForCausalLM.from_config(
        config, attn_implementation="sdpa", dtype=torch.float32
    )
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params / 1e6:.2f}M parameters", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.98),
    )
    dev = generate_problems(args.dev_size, seed=DEV_SEED)
    stream = batch_stream(tokenizer, rng, args.batch_size)
    history, step, tokens, loss_ema = [], 0, 0, None
    stop_reason = f"max_steps={args.max_steps}"
    t_train = time.time()
    while step < args.max_steps:
        model.train()
        input_ids, labels = next(stream)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.max_steps, args.lr, args.warmup)
        loss = model(input_ids=input_ids, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        tokens += input_ids.numel()
        loss_ema = loss.item() if loss_ema is None else 0.95 * loss_ema + 0.05 * loss.item()
        elapsed = time.time() - t_train
        if step % 25 == 0:
            print(
                f"step {step:5d}  loss {loss_ema:.4f}  lr {opt.param_groups[0]['lr']:.2e}  "
                f"{elapsed:6.1f}s  {tokens / elapsed:,.0f} tok/s",
                flush=True,
            )
        if step % args.eval_every == 0 or step == args.max_steps:
            model.eval()
            t_eval = time.time()
            acc = student_accuracy(model, tokenizer, dev)[0]
            gaps = teacher_gaps(model, tokenizer, dev[:64])
            u = {k: round(gaps[k]["mean_u_per_token"], 3) for k in ("opsd", "rlsd", "amrsd")}
            history.append({"step": step, "seconds": round(elapsed, 1), "dev_acc": acc, "u": u})
            print(
                f"  eval step {step}: dev greedy accuracy {acc:.3f}, u/token {u} "
                f"({time.time() - t_eval:.0f}s)",
                flush=True,
            )
            if acc >= args.stop_acc:
                stop_reason = f"dev accuracy {acc:.3f} >= stop_acc {args.stop_acc}"
                break
        if args.max_minutes and elapsed > args.max_minutes * 60:
            stop_reason = f"max_minutes={args.max_minutes}"
            break
    train_s = time.time() - t_train
    print(f"stopped at step {step} ({stop_reason}); training {train_s:.0f}s", flush=True)

    out = ROOT / args.out
    keep = (out / "TRAINING.md").read_text() if (out / "TRAINING.md").exists() else None
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if keep is not None:
        (out / "TRAINING.md").write_text(keep)
    summary = {
        "args": vars(args),
        "mix": MIX,
        "parameters": n_params,
        "steps": step,
        "stop_reason": stop_reason,
        "train_seconds": round(train_s, 1),
        "total_seconds": round(time.time() - t0, 1),
        "history": history,
    }
    (out / "training_log.json").write_text(json.dumps(summary, indent=1) + "\n")
    size = sum(f.stat().st_size for f in out.iterdir()) / 1e6
    print(f"saved to {out} ({size:.1f} MB); total {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
