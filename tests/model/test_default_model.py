"""The embedded default model (server/default_model): loads the ordinary way and behaves as built.

What scripts/train_default_model.py promises: ChatML template, one token per digit, deterministic
logits, and teacher contexts that raise the log-prob of the reference solution (the signal every
self-distillation method in the service relies on). Numbers: server/default_model/TRAINING.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainer.toy import contexts as C
from trainer.toy.arith import generate_problems

MODEL_DIR = Path(__file__).resolve().parents[2] / "server" / "default_model"
MODEL_PATH = os.environ.get("TC_DEFAULT_MODEL_DIR", str(MODEL_DIR))  # to test a fresh build


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(MODEL_PATH)


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(MODEL_PATH, dtype=torch.float32).eval()


def test_loads_through_from_pretrained(model, tok):
    cfg = model.config
    assert cfg.model_type == "qwen3" and cfg.tie_word_embeddings
    assert cfg.vocab_size == len(tok) and cfg.max_position_embeddings >= 1024
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert cfg.eos_token_id == tok.eos_token_id and cfg.pad_token_id == tok.pad_token_id
    size = sum(f.stat().st_size for f in Path(MODEL_PATH).iterdir())
    assert size < 20e6, f"embedded model is {size / 1e6:.1f} MB"
    assert (Path(MODEL_PATH) / "model.safetensors").exists()


def test_chat_template_round_trip(tok):
    msgs = [{"role": "user", "content": "What is 1+2?"}, {"role": "assistant", "content": "3"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<|im_start|>user\nWhat is 1+2?<|im_end|>\n<|im_start|>assistant\n3<|im_end|>\n"
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nWhat is 1+2?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    for special in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        assert len(tok(special, add_special_tokens=False)["input_ids"]) == 1
    user = C.student_user(generate_problems(1, seed=0)[0])
    assert tok.decode(tok(user, add_special_tokens=False)["input_ids"]) == user
    # template words are whole tokens, not letters
    for word in ("user", "assistant", "boxed"):
        assert len(tok(word, add_special_tokens=False)["input_ids"]) == 1


def test_digits_are_single_tokens(tok):
    for d in "0123456789":
        assert len(tok(d, add_special_tokens=False)["input_ids"]) == 1
    ids = tok("12345", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == list("12345")
    pieces = tok.convert_ids_to_tokens(tok("37+48=85.", add_special_tokens=False)["input_ids"])
    assert pieces == ["3", "7", "+", "4", "8", "=", "8", "5", "."]


def test_logits_are_deterministic(model, tok):
    p = generate_problems(1, seed=1)[0]
    ids = tok(C.chat_prompt(tok, C.opsd_user(p)) + p.solution, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, model(input_ids=ids).logits
        reloaded = AutoModelForCausalLM.from_pretrained(MODEL_PATH, dtype=torch.float32).eval()
        c = reloaded(input_ids=ids).logits
    assert torch.equal(a, b) and torch.equal(a, c)
    assert torch.isfinite(a).all()


def _solution_logprobs(model, tok, users, targets):
    """Per row: sum of log p(target tokens | chat prompt(user)) and their count; one batched forward.

    Right padding needs no attention mask: a causal model never attends to the pads after a row.
    """
    prompts = tok([C.chat_prompt(tok, u) for u in users], add_special_tokens=False)["input_ids"]
    tgts = tok(targets, add_special_tokens=False)["input_ids"]
    rows = [p + t for p, t in zip(prompts, tgts)]
    ids = torch.full((len(rows), max(map(len, rows))), tok.pad_token_id)
    for b, r in enumerate(rows):
        ids[b, : len(r)] = torch.tensor(r)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits, dim=-1)  # (B, T, V)
    out = []
    for b, (p, t) in enumerate(zip(prompts, tgts)):
        pos = torch.arange(len(p) - 1, len(p) + len(t) - 1)  # logits at pos predict pos + 1
        out.append((float(logp[b, pos, t].sum()), len(t)))
    return out


@pytest.fixture(scope="module")
def gains(model, tok):
    """Per context: (mean teacher-minus-student per reference token, rows where teacher > student)."""
    problems = generate_problems(16, seed=10_000)  # the eval script's held-out seed
    sols = [p.solution for p in problems]
    student = _solution_logprobs(model, tok, [C.student_user(p) for p in problems], sols)
    n = sum(k for _, k in student)
    out = {}
    for name, make in C.TEACHER_CONTEXTS.items():
        teacher = _solution_logprobs(model, tok, [make(p) for p in problems], sols)
        gain = (sum(t for t, _ in teacher) - sum(s for s, _ in student)) / n
        out[name] = (gain, sum(t > s for (t, _), (s, _) in zip(teacher, student)))
    return out


@pytest.mark.parametrize(
    ("context", "min_gain"),
    [("opsd", 0.05), ("sdpo", 0.05), ("hsd", 0.05), ("antisd", 0.05), ("rlsd", 0.02)],
)
def test_teacher_context_raises_reference_logprob(gains, context, min_gain):
    """Mean over reference tokens of log p_teacher - log p_student is clearly positive."""
    gain, n_up = gains[context]
    assert gain > min_gain, f"{context}: mean teacher-minus-student {gain:.3f} nats/token"
    assert n_up >= 12, f"{context}: teacher above student on only {n_up}/16 solutions"


def test_generates_boxed_answers_and_reflection_tags(model, tok):
    problems = generate_problems(8, seed=10_001)
    users = [C.student_user(p) for p in problems]
    users += [C.reflection_user(p, p.solution, correct=True) for p in problems[:4]]
    side, tok.padding_side = tok.padding_side, "left"
    enc = tok([C.chat_prompt(tok, u) for u in users], return_tensors="pt", padding=True)
    tok.padding_side = side
    with torch.no_grad():
        gen = model.generate(**enc, max_new_tokens=36, do_sample=False)
    texts = tok.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    answers, hints = texts[:8], texts[8:]
    assert sum("\\boxed{" in t for t in answers) >= 6, answers
    assert sum(t.startswith("<hint>") and t.endswith("</hint>") for t in hints) >= 3, hints
