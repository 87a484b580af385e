"""A small on-policy RL loop on the embedded model's arithmetic task, trained through the service.

One file owns the loop (tinker-cookbook's rl/train.py layout): :class:`Config`, then :func:`main`.
Per step, for P prompts × G samples:

1. **Rollout** (in-process): the learner's own HF model samples G completions per prompt at
   ``temperature`` (1 by default), stopping at ``<|im_end|>``;
   :func:`trainer.toy.arith.is_correct` gives r ∈ {0, 1}.
2. **Scoring** (over HTTP): ``POST /v1/advantages`` through :class:`client.TeacherClient` with the
   prompt ids, the problem and its references, and per rollout the response ids, reward, text and
   the learner's own sampling-time log-probs. The answer is Â_{i,t} for every response token.
3. **Update**: one PPO-clip step, token-mean aggregation (docs/algorithms.md §2)::

       L = −Σ_{b,t} m_{b,t} · min(ρ_{b,t} Â_{b,t}, clip(ρ_{b,t}, 1−ε, 1+ε) Â_{b,t}) / Σ m

   ρ = π_θ/π_old with π_old the sampling-time policy, both log softmax(z/T) at the sampling
   temperature. With one update per batch ρ ≡ 1 (its gradient is ∇log π_θ), but the clipped form
   is kept so more epochs would be correct. AdamW, lr 1e-4 after a linear warmup, grad-norm clip
   1.0 (docs/toy.md: 1e-5 does not move the embedded model, 1e-3 collapses it).
4. **Teacher weights**: every ``push_every`` steps the teacher's weights are refreshed through
   ``POST /v1/weights`` (``save_pretrained`` under the server's ``TC_WEIGHTS_ROOT``, then
   ``load_weights``), or with ``weights_sync="push"`` over a gloo group (``push_weights``,
   docs/weights.md); later calls pass ``min_weights_version``. Which weights depends on the
   method's teacher (docs/algorithms.md §1): the current policy (HSD, AntiSD, AMR-SD), an EMA
   (SDPO), a frozen copy re-synced every 20 steps (RLSD), the initial policy, never pushed (OPSD),
   or for OPD a stronger checkpoint on its own server (:mod:`trainer.toy.opd_teacher`).

Logged per step: reward, policy entropy, a KL-to-initial estimate, the share of zero-variance
groups and the method's own state (AntiSD's gate, the share of tokens whose Â ≠ A_i); held-out
sampled/greedy accuracy and pass@k every ``eval_every`` steps (:mod:`trainer.toy.evaluate`).

Run it with ``python -m trainer.toy --method antisd``; ``trainer/toy/compare.py`` runs the paired
comparison. Everything is seeded: a run's problems, samples and peer draws repeat exactly.
"""

from __future__ import annotations

import copy
import json
import os
import random
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from client import AdvantagesResult, TeacherClient
from trainer.teacher_weights import NO_TEACHER, TEACHER_WEIGHTS, WeightPusher
from trainer.toy import analysis
from trainer.toy.arith import (
    Problem,
    extract_boxed,
    generate_problems,
    is_correct,
    random_problem,
)
from trainer.toy.contexts import chat_prompt, student_user
from trainer.toy.evaluate import EvalResult, evaluate_policy

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = REPO_ROOT / "server" / "default_model"

METHODS = ("grpo", "dr_grpo", "opd", "opsd", "sdpo", "rlsd", "hsd", "antisd", "amrsd")

# AntiSD's gate forced open: warm-up done and τ_down = 0, so H < τ_down never closes it.
ANTISD_OPEN_GATE = {"warmup_history": [0.0] * 5, "h_warm": 0.0, "tau_down": 0.0, "g": 1}

EVAL_SEED = 10_000  # the held-out set of scripts/eval_default_model.py
TRAIN_SEED_OFFSET = 1_000  # training problems come from Random(TRAIN_SEED_OFFSET + seed)


@dataclass
class Config:
    # ---- Run ----------------------------------------------------------------------------------
    # Advantage method id, one of METHODS.
    method: str = "antisd"
    # Optimizer steps (one on-policy batch each); the comparison's design (docs/toy.md).
    steps: int = 150
    # Seeds the training problems, sampling, peer draws and the optimizer's initial state.
    seed: int = 0
    # Local HF model folder of the initial policy; empty: the embedded model (or $TC_MODEL).
    model: str = ""
    # Folder for metrics.jsonl, summary.json and (when this loop starts the server) its weights
    # root and log; empty: a fresh folder under /tmp.
    run_dir: str = ""

    # ---- Rollouts -----------------------------------------------------------------------------
    # Prompts per step (P).
    prompts_per_step: int = 16
    # Samples per prompt (G), the group for GRPO statistics and peers.
    group_size: int = 8
    # Longest response in tokens; a response that reaches it without eos keeps its tokens.
    max_new_tokens: int = 48
    # Sampling temperature. The learner's log-probs (π_old, π_θ, the sent student_logprobs) are
    # taken at the same temperature, log softmax(z/T), so the update stays on-policy.
    temperature: float = 1.0

    # ---- Optimizer ----------------------------------------------------------------------------
    # AdamW peak learning rate. On the embedded model through this loop (GRPO, 16 × 8): 1e-5 does
    # not move it in 50 steps, 1e-4 learns for ~200 steps, 2e-4 peaks near step 50 and falls
    # back, 1e-3 collapses it (docs/toy.md).
    lr: float = 1e-4
    # Linear warmup from lr/warmup_steps to lr over this many steps, then constant.
    warmup_steps: int = 10
    # AdamW weight decay.
    weight_decay: float = 0.0
    # Gradient-norm clip.
    max_grad_norm: float = 1.0
    # PPO ratio clip ε.
    clip_eps: float = 0.2
    # Loss aggregation: "token_mean" (Σ over tokens / tokens), "seq_sum_const" (Dr.GRPO: Σ over
    # tokens / (B · max_new_tokens)), or "auto" (seq_sum_const for dr_grpo, else token_mean).
    loss_agg: str = "auto"

    # ---- Teacher service ----------------------------------------------------------------------
    # Base URL of a running server; empty: start one (ServerProcess, hf backend) for this run.
    teacher_url: str = ""
    # Local path of the server's TC_WEIGHTS_ROOT (needed to push weights to a --teacher-url
    # server; set automatically when the loop starts the server). Empty: never push.
    weights_root: str = ""
    # Method parameters sent as `params` (overrides of docs/algorithms.md §1 defaults).
    method_params: dict[str, Any] = field(default_factory=dict)
    # Initial method state sent with the first call (e.g. AntiSD's gate held open:
    # trainer.toy.loop.ANTISD_OPEN_GATE); None: the method's own initial state.
    method_state: dict[str, Any] | None = None
    # Which weights the teacher uses: "auto" (TEACHER_WEIGHTS[method]), "none", "initial",
    # "ema", "resync" or "current".
    teacher_weights: str = "auto"
    # Push the current policy (or the EMA) every this many steps.
    push_every: int = 1
    # How the teacher gets the weights: "disk" (save_pretrained under weights_root, then
    # POST /v1/weights) or "push" (TeacherClient.push_weights: broadcast over a gloo group to
    # every replica, no shared storage; docs/weights.md).
    weights_sync: str = "disk"
    # EMA rate of the SDPO teacher: ema ← (1 − rate)·ema + rate·θ after every step.
    ema_rate: float = 0.05
    # Re-sync period of the RLSD frozen teacher.
    resync_every: int = 20
    # Ask for per-token details (student/teacher log-probs, signal, peer) every this many steps,
    # for the analyses (HSD divergence mass); 0: never.
    details_every: int = 1

    # Scale the method's annealing schedules (AMR-SD t_decay, RLSD decay_steps) to the run: their
    # papers anneal over training, so a fixed 50 steps would make a 150-step run GRPO after step 50.
    scale_schedules: bool = True

    # ---- Evaluation ---------------------------------------------------------------------------
    # Held-out evaluation (trainer.toy.evaluate) every this many steps, and at the first and last.
    eval_every: int = 25
    # Held-out problems (seed EVAL_SEED, disjoint from the training stream's seed).
    eval_problems: int = 500
    # Samples per held-out problem at temperature 1 (sampled accuracy = their mean; pass@k).
    eval_samples: int = 4
    # Save the final policy (save_pretrained) into this folder; empty: don't.
    save_model: str = ""

    # ---- Output and machine -------------------------------------------------------------------
    # Show a tqdm progress bar.
    progress: bool = True
    # torch threads of the learner and of a server this loop starts (OMP_NUM_THREADS). On a
    # shared 2-core machine 1 is 10-30x faster than 2: spinning OpenMP threads starve each other.
    threads: int = 1

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {', '.join(METHODS)}; got {self.method!r}")
        if self.teacher_weights not in ("auto", "none", "initial", "ema", "resync", "current"):
            raise ValueError(f"unknown teacher_weights {self.teacher_weights!r}")
        if self.loss_agg not in ("auto", "token_mean", "seq_sum_const"):
            raise ValueError(f"unknown loss_agg {self.loss_agg!r}")
        if self.lr >= 1e-3:
            print(f"warning: lr={self.lr} >= 1e-3 collapsed the embedded model (docs/toy.md)")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0 (the rollouts are sampled)")
        if self.eval_samples < 1 or self.eval_every < 1:
            raise ValueError("eval_samples and eval_every must be >= 1")
        if self.weights_sync not in ("disk", "push"):
            raise ValueError(f'weights_sync must be "disk" or "push", got {self.weights_sync!r}')
        if self.push_every < 1 or self.resync_every < 1:
            raise ValueError("push_every and resync_every must be >= 1")

    @property
    def teacher_policy(self) -> str:
        if self.teacher_weights != "auto":
            return self.teacher_weights
        return TEACHER_WEIGHTS[self.method]

    @property
    def agg(self) -> str:
        if self.loss_agg != "auto":
            return self.loss_agg
        return "seq_sum_const" if self.method == "dr_grpo" else "token_mean"


def model_path(cfg: Config) -> str:
    return cfg.model or os.environ.get("TC_MODEL") or str(DEFAULT_MODEL)


# ---- Rollouts ----------------------------------------------------------------------------------


@dataclass
class Batch:
    """One step's rollouts; b = p·G + g indexes rollout g of prompt p (B = P·G)."""

    problems_P: list[Problem]
    prompt_ids_P: list[list[int]]
    response_ids_B: list[list[int]]
    texts_B: list[str]
    rewards_B: np.ndarray  # (B,) float64 in {0, 1}
    input_ids_BS: torch.Tensor  # (B, S) left-padded prompt + right-padded response
    attn_BS: torch.Tensor  # (B, S) 1 on real tokens
    resp_mask_BT: torch.Tensor  # (B, T) 1 on response tokens (through eos)
    prompt_len: int  # S − T: the padded prompt width


def encode_prompts(tokenizer, problems_P: list[Problem]) -> list[list[int]]:
    texts = [chat_prompt(tokenizer, student_user(p)) for p in problems_P]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    S = max(len(r) for r in rows)
    ids = torch.full((len(rows), S), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), S), dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, S - len(r) :] = torch.tensor(r, dtype=torch.long)
        attn[b, S - len(r) :] = 1
    return ids, attn


def response_lengths(new_BT: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Tokens through the first eos (inclusive), or T when a row never stops.  # (B,)"""
    T = new_BT.shape[1]
    is_eos = new_BT == eos_id
    first = torch.where(is_eos.any(1), is_eos.float().argmax(1), torch.full_like(new_BT[:, 0], T))
    return torch.clamp(first + 1, max=T)


@torch.no_grad()
def generate(
    model, tokenizer, prompt_ids: list[list[int]], max_new_tokens: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Sample (temperature > 0) or decode greedily.

    Returns ``(ids_BS, attn_BS, lengths_B, prompt_len)``: left-padded prompts then responses
    (pad after eos), the attention mask (1 on prompt and response tokens through eos), response
    lengths and the padded prompt width (S − T).
    """
    ids, attn = left_pad(prompt_ids, tokenizer.pad_token_id)
    sampling: dict[str, Any] = {"do_sample": temperature > 0, "top_k": None, "top_p": None}
    if temperature > 0:
        sampling["temperature"] = temperature
    out = model.generate(
        input_ids=ids,
        attention_mask=attn,
        max_new_tokens=max_new_tokens,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **sampling,
    )
    new_BT = out[:, ids.shape[1] :]
    lengths_B = response_lengths(new_BT, tokenizer.eos_token_id)
    T = new_BT.shape[1]
    resp_mask = (torch.arange(T)[None, :] < lengths_B[:, None]).long()  # (B, T)
    return torch.cat([ids, new_BT], 1), torch.cat([attn, resp_mask], 1), lengths_B, ids.shape[1]


def sample_batch(model, tokenizer, problems_P: list[Problem], cfg: Config) -> Batch:
    G = cfg.group_size
    prompt_ids_P = encode_prompts(tokenizer, problems_P)
    rows_B = [ids for ids in prompt_ids_P for _ in range(G)]
    ids_BS, attn_BS, lengths_B, prompt_len = generate(
        model, tokenizer, rows_B, cfg.max_new_tokens, cfg.temperature
    )
    resp_BT = ids_BS[:, prompt_len:]
    response_ids_B = [resp_BT[b, : int(n)].tolist() for b, n in enumerate(lengths_B)]
    texts_B = tokenizer.batch_decode(response_ids_B, skip_special_tokens=True)
    rewards_B = np.array(
        [float(is_correct(t, problems_P[b // G].answer)) for b, t in enumerate(texts_B)]
    )
    return Batch(
        problems_P=problems_P,
        prompt_ids_P=prompt_ids_P,
        response_ids_B=response_ids_B,
        texts_B=texts_B,
        rewards_B=rewards_B,
        input_ids_BS=ids_BS,
        attn_BS=attn_BS,
        resp_mask_BT=attn_BS[:, prompt_len:].clone(),
        prompt_len=prompt_len,
    )


def response_logprobs_entropy(
    model, batch: Batch, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """log π_θ(y_t | x, y_<t) at ``temperature`` (with grad) and the policy's entropy (no grad).

    π_θ = softmax(z / T): the distribution the rollouts were sampled from, so the ratio, the
    gradient and the ``student_logprobs`` sent to the teacher all belong to the sampling policy.
    Entropy H_t = −Σ_v π_θ(v) log π_θ(v). Both are 0 off the response mask.  # (B, T), (B, T)

    Left padding needs explicit positions: ``position_ids = cumsum(attention_mask) − 1``.
    """
    ids, attn = batch.input_ids_BS, batch.attn_BS
    pos = (attn.cumsum(1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=attn, position_ids=pos).logits  # (B, S, V)
    # position s predicts s + 1
    logits_BTV = logits[:, batch.prompt_len - 1 : -1].float() / temperature
    targets_BT = ids[:, batch.prompt_len :]
    logz_BT = logits_BTV.logsumexp(-1)
    # log_softmax(x)[y] = x[y] − logsumexp(x)
    lp_BT = logits_BTV.gather(-1, targets_BT[..., None])[..., 0] - logz_BT
    with torch.no_grad():
        logp_BTV = logits_BTV - logz_BT[..., None]
        ent_BT = -(logp_BTV.exp() * logp_BTV).sum(-1)
    mask = batch.resp_mask_BT.bool()
    zeros = torch.zeros_like(lp_BT)
    return torch.where(mask, lp_BT, zeros), torch.where(mask, ent_BT, zeros.detach())


def response_logprobs(model, batch: Batch, temperature: float = 1.0) -> torch.Tensor:
    """log π_θ(y_t | x, y_<t) at ``temperature`` for every response token, with grad.  # (B, T)"""
    return response_logprobs_entropy(model, batch, temperature)[0]


def kl_to_initial(lp_BT: torch.Tensor, init_lp_BT: torch.Tensor, mask_BT: torch.Tensor) -> float:
    """Mean over response tokens of the k3 estimator of KL(π_θ ‖ π_init) on the policy's samples.

    With ρ = π_init(y_t) / π_θ(y_t): k3 = ρ − 1 − log ρ ≥ 0, unbiased, low variance (Schulman 2020).
    """
    log_rho = (init_lp_BT - lp_BT).double()
    k3 = log_rho.exp() - 1 - log_rho
    m = mask_BT.bool()
    return float(k3[m].mean()) if m.any() else 0.0


def zero_variance_share(rewards_B: np.ndarray, G: int) -> float:
    """Share of groups whose G rewards are all equal (GRPO's A_i = 0 for every rollout)."""
    r_PG = np.asarray(rewards_B).reshape(-1, G)
    return float((r_PG.max(1) == r_PG.min(1)).mean())


def modulated_share(advantages_B, A_B: np.ndarray, tol: float = 1e-6) -> float:
    """Share of response tokens whose Â differs from GRPO's A_i (AMR-SD: Δ_t ≠ 0 where A_i ≠ 0).

    Only tokens with A_i ≠ 0 count: there a multiplicative method can change Â at all.
    """
    changed = total = 0
    for adv_T, a in zip(advantages_B, A_B):
        if abs(a) <= tol:
            continue
        adv_T = np.asarray(adv_T, dtype=np.float64)
        changed += int((np.abs(adv_T - a) > tol * max(1.0, abs(a))).sum())
        total += adv_T.size
    return changed / total if total else 0.0


# ---- Scoring ------------------------------------------------------------------------------------


def feedback_for(text: str, reward: float) -> str | None:
    """What the task's verifier can say about a failed rollout (SDPO's environment feedback)."""
    if reward >= 0.5:
        return None
    answer = extract_boxed(text)
    if answer is None:
        return "The response has no final answer in \\boxed{}."
    return f"The final answer {answer} is wrong."


def request_groups(batch: Batch, old_lp_BT: torch.Tensor, G: int) -> list[dict[str, Any]]:
    groups = []
    for p, problem in enumerate(batch.problems_P):
        rollouts = []
        for b in range(p * G, (p + 1) * G):
            n = len(batch.response_ids_B[b])
            rollouts.append(
                {
                    "response_ids": batch.response_ids_B[b],
                    "reward": float(batch.rewards_B[b]),
                    "text": batch.texts_B[b],
                    "student_logprobs": old_lp_BT[b, :n].numpy(),
                    "feedback": feedback_for(batch.texts_B[b], float(batch.rewards_B[b])),
                }
            )
        groups.append(
            {
                "prompt_ids": batch.prompt_ids_P[p],
                "problem": problem.question,
                "reference_answer": problem.answer,
                "reference_solution": problem.solution,
                "rollouts": rollouts,
            }
        )
    return groups


def advantages_BT(res: AdvantagesResult, T: int) -> torch.Tensor:
    flat = res.flat()
    out = torch.zeros((len(flat), T), dtype=torch.float32)
    for b, a in enumerate(flat):
        out[b, : len(a)] = torch.from_numpy(np.asarray(a, dtype=np.float32))
    return out


# ---- Update -------------------------------------------------------------------------------------


def ppo_loss(
    lp_BT: torch.Tensor,
    old_lp_BT: torch.Tensor,
    adv_BT: torch.Tensor,
    mask_BT: torch.Tensor,
    clip_eps: float,
    agg: str,
    max_new_tokens: int,
) -> torch.Tensor:
    """−agg(min(ρÂ, clip(ρ, 1−ε, 1+ε)Â)) over response tokens (docs/algorithms.md §2)."""
    ratio_BT = torch.exp(lp_BT - old_lp_BT)
    surr_BT = torch.minimum(ratio_BT * adv_BT, ratio_BT.clamp(1 - clip_eps, 1 + clip_eps) * adv_BT)
    surr_BT = torch.where(mask_BT.bool(), surr_BT, torch.zeros_like(surr_BT))
    if agg == "token_mean":
        return -surr_BT.sum() / mask_BT.sum().clamp(min=1)
    return -surr_BT.sum() / (mask_BT.shape[0] * max_new_tokens)  # Dr.GRPO: a constant


def lr_at(step: int, cfg: Config) -> float:
    if cfg.warmup_steps <= 0:
        return cfg.lr
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup_steps)


# ---- Teacher weights ----------------------------------------------------------------------------


def sync_teacher_weights(
    pusher: WeightPusher, cfg: Config, done: int, model, ema, tokenizer
) -> int | None:
    """After optimizer step ``done``: push the weights the method's teacher uses, if due.

    The one place the loop refreshes the teacher (docs/algorithms.md §1, "teacher weights"). Returns
    the new weights version, or None when nothing was pushed.
    """
    if not pusher.enabled or cfg.method in NO_TEACHER:
        return None
    policy, tag = cfg.teacher_policy, f"step-{done:04d}"
    if policy == "current" and done % cfg.push_every == 0:
        return pusher.push(model, tokenizer, tag)
    if policy == "ema" and done % cfg.push_every == 0:
        return pusher.push(ema, tokenizer, tag)
    if policy == "resync" and done % cfg.resync_every == 0:
        return pusher.push(model, tokenizer, tag)
    return None


# ---- Main ---------------------------------------------------------------------------------------


@dataclass
class StepLog:
    step: int
    reward: float
    mean_abs_adv: float
    resp_len: float
    loss: float
    grad_norm: float
    lr: float
    weights_version: int
    seconds_rollout: float
    seconds_scoring: float
    seconds_update: float
    seconds_push: float
    stats: dict[str, Any]
    entropy: float  # mean per-token entropy of π_θ (at the sampling temperature), sampled tokens
    kl_initial: float  # mean per-token k3 estimate of KL(π_θ ‖ π_initial) on this step's samples
    zero_variance_groups: float  # share of groups with all-equal rewards
    modulated_share: float  # share of tokens (A_i ≠ 0) where Â ≠ A_i (AMR-SD: Δ_t ≠ 0)
    gate: int | None = None  # AntiSD's gate g
    eval: dict[str, float] | None = None
    sign_flips: int = 0
    sign_tokens: int = 0
    hsd_window_mass: float | None = None  # Σ in-window |signal| of this step's failed-with-peer
    hsd_total_mass: float | None = None
    hsd_uniform_mass: float | None = None  # same, if |signal| were uniform over each response
    hsd_rollouts: int = 0


def start_server(cfg: Config, run_dir: Path, stack: ExitStack) -> tuple[str, str]:
    from client.launcher import ServerProcess

    weights_root = run_dir / "weights"
    weights_root.mkdir(parents=True, exist_ok=True)
    env = {
        "TC_MODEL": model_path(cfg),
        "TC_BACKEND": "hf",
        "TC_DEVICE": "cpu",
        "TC_DTYPE": "float32",
        "TC_WEIGHTS_ROOT": str(weights_root),
        "TC_LOG_LEVEL": "warning",
        "OMP_NUM_THREADS": str(cfg.threads),
        "MKL_NUM_THREADS": str(cfg.threads),
    }
    proc = ServerProcess(env=env, log_path=run_dir / "server.log")
    stack.enter_context(proc)
    return proc.url, str(weights_root)


SCHEDULE_PARAMS = {"amrsd": "t_decay", "rlsd": "decay_steps"}


def method_params(cfg: Config) -> dict[str, Any]:
    """``cfg.method_params`` plus, with ``scale_schedules``, the annealing horizon set to the run."""
    params = dict(cfg.method_params)
    key = SCHEDULE_PARAMS.get(cfg.method)
    if cfg.scale_schedules and key and key not in params:
        params[key] = cfg.steps
    return params


def eval_sampling_seed(seed: int) -> int:
    """Seed of the held-out draws: the same for every method and every evaluation of seed s."""
    return 20_000 + 7919 * seed


def main(cfg: Config, client: TeacherClient | None = None) -> dict[str, Any]:
    """Run ``cfg.steps`` steps; returns the summary (also written to ``run_dir/summary.json``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(cfg.threads)
    run_dir = Path(cfg.run_dir or f"/tmp/tokencredit-toy/{cfg.method}-s{cfg.seed}-{os.getpid()}")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    path = model_path(cfg)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    initial = copy.deepcopy(model).eval()  # for the KL-to-initial estimate
    ema = copy.deepcopy(model).eval() if cfg.teacher_policy == "ema" else None
    params = method_params(cfg)

    rng = random.Random(TRAIN_SEED_OFFSET + cfg.seed)
    eval_set = generate_problems(cfg.eval_problems, seed=EVAL_SEED)
    G = cfg.group_size

    with ExitStack() as stack:
        weights_root = cfg.weights_root
        if client is None:
            url = cfg.teacher_url
            if not url:
                url, weights_root = start_server(cfg, run_dir, stack)
            client = stack.enter_context(TeacherClient(url, timeout=300.0))
        pusher = WeightPusher(client, weights_root, run_dir.name, cfg.weights_sync)
        needs_teacher = cfg.method not in NO_TEACHER
        # Start the teacher from the initial policy (a shared server may hold another run's).
        min_version = None
        if needs_teacher and pusher.enabled:
            min_version = pusher.push(model, tokenizer, "step-0000")
        version = min_version if min_version is not None else client.model().weights_version

        state: dict[str, Any] | None = cfg.method_state
        logs: list[StepLog] = []
        log_file = stack.enter_context(open(run_dir / "metrics.jsonl", "w"))
        evals: list[EvalResult] = []
        t_eval = 0.0

        def run_eval(step: int) -> EvalResult:
            nonlocal t_eval
            started = time.perf_counter()
            result = evaluate_policy(
                model,
                tokenizer,
                eval_set,
                step,
                cfg.max_new_tokens,
                cfg.eval_samples,
                eval_sampling_seed(cfg.seed),
            )
            t_eval += time.perf_counter() - started
            evals.append(result)
            return result

        run_eval(0)
        bar = tqdm(range(cfg.steps), desc=cfg.method, disable=not cfg.progress, dynamic_ncols=True)
        for step in bar:
            # 1. Rollouts
            t0 = time.perf_counter()
            problems_P = [random_problem(rng) for _ in range(cfg.prompts_per_step)]
            torch.manual_seed(cfg.seed * 1_000_003 + step)
            batch = sample_batch(model, tokenizer, problems_P, cfg)
            t1 = time.perf_counter()

            # 3a. Forward with grad now: its detached values are the sampling-time log-probs
            # (same weights, same temperature), sent as student_logprobs, and π_old of the ratio.
            lp_BT, ent_BT = response_logprobs_entropy(model, batch, cfg.temperature)
            old_lp_BT = lp_BT.detach()
            with torch.no_grad():
                init_lp_BT = response_logprobs(initial, batch, cfg.temperature)
            t2 = time.perf_counter()

            # 2. Scoring through the service
            want_details = cfg.details_every > 0 and step % cfg.details_every == 0
            res = client.advantages(
                cfg.method,
                request_groups(batch, old_lp_BT, G),
                params=params,
                step=step,
                state=state,
                seed=cfg.seed * 1_000_003 + step,
                return_details=want_details and needs_teacher,
                min_weights_version=min_version,
            )
            state = res.state if res.state is not None else state
            T = batch.resp_mask_BT.shape[1]
            adv_BT = advantages_BT(res, T)
            t3 = time.perf_counter()

            # 3b. Update
            loss = ppo_loss(
                lp_BT,
                old_lp_BT,
                adv_BT,
                batch.resp_mask_BT,
                cfg.clip_eps,
                cfg.agg,
                cfg.max_new_tokens,
            )
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                group["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    for pe, pm in zip(ema.parameters(), model.parameters()):
                        pe.lerp_(pm, cfg.ema_rate)
            t4 = time.perf_counter()

            # 4. Teacher weights
            push_before = pusher.seconds
            done = step + 1
            pushed = sync_teacher_weights(pusher, cfg, done, model, ema, tokenizer)
            min_version = pushed if pushed is not None else min_version
            version = min_version if min_version is not None else res.weights_version

            # Logging and analyses
            mask = batch.resp_mask_BT.bool()
            A_B = analysis.grpo_advantages(batch.rewards_B, G)
            flips, n_sign = analysis.sign_flips(res.flat(), A_B)
            log = StepLog(
                step=done,
                reward=float(batch.rewards_B.mean()),
                mean_abs_adv=float(adv_BT[mask].abs().mean()) if mask.any() else 0.0,
                resp_len=float(mask.sum(1).float().mean()),
                loss=loss.item(),
                grad_norm=grad_norm,
                lr=lr,
                weights_version=int(version),
                seconds_rollout=t1 - t0,
                seconds_scoring=t3 - t2,
                seconds_update=(t2 - t1) + (t4 - t3),
                seconds_push=pusher.seconds - push_before,
                stats=res.stats.model_dump(),
                entropy=float(ent_BT[mask].mean()) if mask.any() else 0.0,
                kl_initial=kl_to_initial(old_lp_BT, init_lp_BT, batch.resp_mask_BT),
                zero_variance_groups=zero_variance_share(batch.rewards_B, G),
                modulated_share=modulated_share(res.flat(), A_B),
                gate=res.stats.gate,
                sign_flips=flips,
                sign_tokens=n_sign,
            )
            if want_details and cfg.method == "hsd":
                hsd = analysis.hsd_divergence_mass(
                    batch.response_ids_B, batch.rewards_B, res, G, window=8
                )
                log.hsd_window_mass = hsd.window_mass
                log.hsd_total_mass = hsd.total_mass
                log.hsd_uniform_mass = hsd.uniform_window_mass
                log.hsd_rollouts = hsd.rollouts
            if done % cfg.eval_every == 0 or done == cfg.steps:
                log.eval = asdict(run_eval(done))
            logs.append(log)
            log_file.write(json.dumps(asdict(log)) + "\n")
            log_file.flush()
            postfix = {"r": f"{log.reward:.2f}", "H": f"{log.entropy:.2f}"}
            if log.gate is not None:
                postfix["gate"] = log.gate
            postfix["eval"] = f"{evals[-1].sampled:.3f}"
            bar.set_postfix(postfix)
        bar.close()
    if cfg.save_model:
        model.save_pretrained(cfg.save_model)
        tokenizer.save_pretrained(cfg.save_model)
    summary = summarise(cfg, logs, evals, state, t_eval)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarise(
    cfg: Config,
    logs: list[StepLog],
    evals: list[EvalResult],
    state: dict[str, Any] | None,
    t_eval: float,
) -> dict[str, Any]:
    """The run's summary: curves, per-step diagnostics in short lists, time split."""
    n = max(len(logs), 1)
    gates = [x.gate for x in logs if x.gate is not None]
    warm = 0  # warm-up steps of AntiSD's gate (closed by design); none when the state is given
    if cfg.method == "antisd" and cfg.method_state is None:
        warm = int(method_params(cfg).get("warmup_steps", 5))
    summary = {
        "method": cfg.method,
        "seed": cfg.seed,
        "steps": cfg.steps,
        "lr": cfg.lr,
        "method_params": method_params(cfg),
        "evals": [asdict(e) for e in evals],
        "eval_curve": [(e.step, e.sampled) for e in evals],
        "initial": asdict(evals[0]),
        "final": asdict(evals[-1]),
        "mean_train_reward": float(np.mean([x.reward for x in logs])) if logs else 0.0,
        "per_step": {
            key: [round(float(getattr(x, key)), 5) for x in logs]
            for key in (
                "reward",
                "entropy",
                "kl_initial",
                "zero_variance_groups",
                "modulated_share",
            )
        },
        # AntiSD: share of post-warm-up steps with the gate open.
        "gate_open_share": float(np.mean(gates[warm:])) if gates[warm:] else None,
        "seconds_per_step": {
            "rollout": sum(x.seconds_rollout for x in logs) / n,
            "scoring": sum(x.seconds_scoring for x in logs) / n,
            "update": sum(x.seconds_update for x in logs) / n,
            "push": sum(x.seconds_push for x in logs) / n,
        },
        "seconds_eval_total": t_eval,
        "sign_flips": sum(x.sign_flips for x in logs),
        "sign_tokens": sum(x.sign_tokens for x in logs),
        "final_state": state,
        "weights_version": logs[-1].weights_version if logs else None,
    }
    hsd_logs = [x for x in logs if x.hsd_total_mass]
    if hsd_logs:
        total = sum(x.hsd_total_mass for x in hsd_logs)
        summary["hsd_window_share"] = sum(x.hsd_window_mass for x in hsd_logs) / total
        summary["hsd_uniform_share"] = sum(x.hsd_uniform_mass for x in hsd_logs) / total
        summary["hsd_rollouts"] = sum(x.hsd_rollouts for x in hsd_logs)
    return summary
