"""`TokenCreditGRPOTrainer`: TRL's GRPOTrainer with per-token advantages from tokencredit.

TRL 1.16's ``_compute_loss`` takes advantages of shape ``(B, T)`` from subclasses (it unsqueezes
only 1-D ones). After TRL generates and scores a batch, this trainer sends its groups (prompt
and completion ids exactly as TRL holds them, rewards, the policy's per-token log-probs, problem
and references from dataset columns) to ``POST /v1/advantages`` through `client.TeacherClient`
and replaces TRL's sequence advantages with the answer, column for column with
``completion_mask`` (alignment: `trainer.trl.batch`). Everything else (loss type, clipping, KL,
optimizer, logging, checkpoints) is TRL's.

    >>> from trainer.trl import TokenCreditConfig, TokenCreditGRPOTrainer      # doctest: +SKIP
    >>> args = TokenCreditConfig(output_dir="out", credit_method="hsd",
    ...     teacher_url="http://127.0.0.1:8000", teacher_weights_root="/srv/weights",
    ...     use_cpu=True, bf16=False)
    >>> TokenCreditGRPOTrainer(model="my/model", reward_funcs=reward, args=args,
    ...     train_dataset=ds).train()

Per generation batch: the method ``state`` of the previous call (AntiSD's entropy gate), the
global ``step`` and ``seed = credit_seed + step`` go with the request; the returned state is kept
and saved in TRL's checkpoints (``tokencredit_state.json``, and SDPO's EMA teacher), and
restored on resume. For methods
whose teacher follows the policy the weights reach the server every ``teacher_sync_steps`` steps
(`trainer.teacher_weights.WeightPusher`): through ``POST /v1/weights`` from a checkpoint under
``teacher_weights_root`` (``teacher_weights_sync="disk"``), or broadcast over a
``torch.distributed`` group with ``TeacherClient.push_weights`` (``"push"``, docs/weights.md),
at the point where TRL syncs its own vLLM engines: the unwrapped model, before the batch it
scores. Later calls require that ``min_weights_version``.

Failures raise `TeacherCreditError`: the client's transport retries connection errors, 429 and
502-504 and fails over between replicas; when it gives up, the step fails. Nothing falls back to
TRL's own advantages.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback
from trl import GRPOTrainer

from client import AdvantagesResult, RetryPolicy, TeacherClient, Timeout, TokenCreditError
from trainer.teacher_weights import NO_TEACHER, WeightPusher
from trainer.trl.batch import AlignmentError, advantages_tensor, build_groups
from trainer.trl.config import TokenCreditConfig

log = logging.getLogger("tokencredit.trl")

# Saved in every TRL checkpoint folder beside trainer_state.json.
CHECKPOINT_FILE = "tokencredit_state.json"
EMA_FOLDER = "tokencredit_ema"  # SDPO's EMA teacher, beside it


class TeacherCreditError(RuntimeError):
    """The step's per-token advantages could not be obtained; the step is not taken."""


class _EmaTeacher(TrainerCallback):
    """SDPO's teacher: ``ema <- (1 - rate) * ema + rate * theta`` after every optimizer step."""

    def __init__(self, ema: torch.nn.Module, rate: float):
        self.ema, self.rate = ema, rate

    def on_step_end(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            for pe, pm in zip(self.ema.parameters(), model.parameters()):
                pe.lerp_(pm.detach().to(pe.dtype), self.rate)


class TokenCreditGRPOTrainer(GRPOTrainer):
    """`GRPOTrainer` whose advantages are tokencredit's per-token credit (see module docstring).

    Args: those of `GRPOTrainer`, with ``args`` a `TokenCreditConfig`, plus ``client``: a
    `TeacherClient` to use instead of one built from ``args.teacher_url`` (tests, custom
    transports).
    """

    def __init__(self, *args: Any, client: TeacherClient | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        cfg = self.args
        if not isinstance(cfg, TokenCreditConfig):
            raise TypeError(f"args must be a TokenCreditConfig, got {type(cfg).__name__}")
        if self.accelerator.num_processes > 1:
            # A group's rollouts may sit on different ranks (TRL gathers rewards for its group
            # statistics); this trainer sends one process's batch and would cut groups apart.
            raise NotImplementedError(
                "TokenCreditGRPOTrainer runs in one process; multi-process training is not "
                "supported yet"
            )
        if self.tools or self.environment_factories is not None:
            raise NotImplementedError(
                "tool calling / environments interleave observations with completion tokens; "
                "/v1/advantages scores one contiguous response per prompt"
            )
        self.credit_client = client or TeacherClient(
            cfg.teacher_urls,
            api_key=cfg.teacher_api_key,
            admin_key=cfg.teacher_admin_key,
            timeout=Timeout(cfg.teacher_timeout, connect=5.0),
            retry=RetryPolicy(retries=cfg.teacher_retries),
        )
        self.credit_state: dict[str, Any] | None = None  # from the previous /v1/advantages answer
        self.credit_calls = 0
        self.last_credit: AdvantagesResult | None = None
        self.min_weights_version: int | None = None
        self._pusher = WeightPusher(
            self.credit_client,
            cfg.teacher_weights_root,
            f"trl-{Path(cfg.output_dir).name}-{os.getpid()}",
            sync=cfg.teacher_weights_sync,
            push_backend=cfg.teacher_push_backend,
        )
        self._last_push_step: int | None = None
        self._ema: torch.nn.Module | None = None
        if cfg.teacher_policy == "ema":
            self._ema = copy.deepcopy(self.accelerator.unwrap_model(self.model)).eval()
            self._ema.requires_grad_(False)
            self.add_callback(_EmaTeacher(self._ema, cfg.teacher_ema_rate))
        self._generated: tuple | None = None
        self._rewards_per_func: torch.Tensor | None = None
        self._phase_seconds: dict[str, float] = {}

    # ---- TRL hooks: capture what TRL holds ----------------------------------------------------

    def _generate(self, prompts: list):
        started = time.perf_counter()
        out = super()._generate(prompts)
        self._phase_seconds["generation"] = time.perf_counter() - started
        self._generated = out  # (prompt_ids_list, completion_ids_list, ...) unpadded
        return out

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(
            inputs, prompts, completions, completion_ids_list
        )
        self._rewards_per_func = rewards_per_func
        return rewards_per_func

    def training_step(self, model, inputs, num_items_in_batch):
        self._phase_seconds = {}
        started = time.perf_counter()
        out = super().training_step(model, inputs, num_items_in_batch)
        total = time.perf_counter() - started
        # Everything of this micro-step that was not generation, scoring or a push: the policy
        # forward/backward and optimizer step (TRL's own step_time includes all of it).
        self._metrics["train"]["timing/update"].append(total - sum(self._phase_seconds.values()))
        return out

    # ---- the step ------------------------------------------------------------------------------

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        mode = "train" if self.model.training else "eval"
        if mode == "train":
            self._sync_teacher()
        self._generated = self._rewards_per_func = None
        output = super()._generate_and_score_completions(inputs)
        if self._generated is None or self._rewards_per_func is None:
            raise TeacherCreditError(
                "TRL did not go through _generate and _calculate_rewards for this batch "
                "(a changed TRL version?): the completions to score are unknown"
            )
        prompt_ids_list, completion_ids_list = self._generated[0], self._generated[1]
        C = output["completion_ids"].size(1)
        cfg = self.args
        method = cfg.credit_method

        started = time.perf_counter()
        logps_BC = None
        if method not in NO_TEACHER:
            logps_BC = output.get("old_per_token_logps")
            if logps_BC is None:
                logps_BC = self._policy_logps(output, completion_ids_list)
        self._phase_seconds["student_logprobs"] = time.perf_counter() - started

        weights = self.reward_weights.to(self._rewards_per_func.device)
        rewards_B = (self._rewards_per_func * weights.unsqueeze(0)).nansum(dim=1)
        rewards_B[torch.isnan(self._rewards_per_func).all(dim=1)] = float("nan")
        num_generations = self.num_generations if mode == "train" else self.num_generations_eval
        columns = {
            "problem": cfg.problem_column,
            "reference_answer": cfg.answer_column,
            "reference_solution": cfg.solution_column,
        }
        step = self.state.global_step
        try:
            groups = build_groups(
                prompt_ids_list,
                completion_ids_list,
                rewards_B.tolist(),
                logps_BC,
                inputs,
                num_generations,
                columns,
            )
        except AlignmentError as exc:
            raise TeacherCreditError(
                f"step {step}: cannot build /v1/advantages groups: {exc}"
            ) from exc

        started = time.perf_counter()
        try:
            result = self.credit_client.advantages(
                method,
                groups,
                params=cfg.credit_params,
                step=step,
                state=self.credit_state,
                seed=cfg.credit_seed + step,
                min_weights_version=self.min_weights_version,
            )
        except TokenCreditError as exc:
            raise TeacherCreditError(
                f"tokencredit /v1/advantages failed at step {step} (method {method!r}, "
                f"{len(groups)} groups, {len(completion_ids_list)} rollouts) after the client's "
                f"retries; the step is not taken: {type(exc).__name__}: {exc}"
            ) from exc
        self._phase_seconds["scoring"] = time.perf_counter() - started

        adv_BC = advantages_tensor(result.flat(), completion_ids_list, C)
        output["advantages"] = adv_BC.to(output["completion_ids"].device)
        self.last_credit = result
        if mode == "train":
            # Eval batches do not advance the run's method state.
            self.credit_state = result.state
            self.credit_calls += 1
        self._log_credit(mode, result, output)
        return output

    @torch.no_grad()
    def _policy_logps(self, output: dict[str, Any], completion_ids_list: list) -> torch.Tensor:
        """Per-token log-probs of the completions under the current policy, ``(B, C)``, exactly
        as ``_compute_loss`` takes them (same helper, same temperature). The attention mask
        covers every generated token even when ``mask_truncated_completions`` zeroed a row."""
        completion_ids = output["completion_ids"]
        C = completion_ids.shape[1]
        lengths_B = torch.tensor(
            [len(c) for c in completion_ids_list], device=completion_ids.device
        )
        attn_BC = (
            torch.arange(C, device=completion_ids.device)[None, :] < lengths_B[:, None]
        ).long()
        ids = torch.cat([output["prompt_ids"], completion_ids], dim=1)
        attn = torch.cat([output["prompt_mask"], attn_BC], dim=1)
        logps_BC, _, _ = self._get_per_token_logps_and_entropies(
            self.model, ids, attn, C, batch_size=self.args.per_device_train_batch_size
        )
        return logps_BC

    def _log_credit(self, mode: str, result: AdvantagesResult, output: dict[str, Any]) -> None:
        mask = output["completion_mask"].bool()
        adv = output["advantages"]
        metrics = self._metrics[mode]
        metrics["tokencredit/mean_abs_advantage"].append(
            adv[mask].abs().mean().item() if mask.any() else 0.0
        )
        metrics["tokencredit/weights_version"].append(float(result.weights_version))
        stats = result.stats
        if stats.mean_abs_signal is not None:
            metrics["tokencredit/mean_abs_signal"].append(float(stats.mean_abs_signal))
        if stats.gate is not None:
            metrics["tokencredit/gate"].append(float(stats.gate))
        if stats.teacher_entropy is not None:
            metrics["tokencredit/teacher_entropy"].append(float(stats.teacher_entropy))
        for name, seconds in self._phase_seconds.items():
            metrics[f"timing/{name}"].append(seconds)

    # ---- teacher weights -------------------------------------------------------------------

    def _sync_teacher(self) -> None:
        """Push the teacher's weights when due (before the batch they score)."""
        cfg = self.args
        policy = cfg.teacher_policy
        if not self._pusher.enabled or policy == "none" or cfg.credit_method == "opd":
            return  # opd: the served model is the (external) teacher, never replaced
        step = self.state.global_step
        if self._last_push_step is None:
            due = True  # the run's first batch (or first after resume): start from our weights
        elif policy == "initial":
            due = False
        else:
            due = step - self._last_push_step >= cfg.teacher_sync_steps
        if not due:
            return
        started = time.perf_counter()
        source = self._ema if self._ema is not None else self.accelerator.unwrap_model(self.model)
        if policy == "initial" and step > 0:
            source = self._initial_policy()  # a resumed opsd run: its teacher stays the start
        try:
            version = self._pusher.push(source, self.processing_class, f"step-{step:06d}")
        except TokenCreditError as exc:
            raise TeacherCreditError(
                f"pushing the teacher's weights at step {step} failed: {type(exc).__name__}: {exc}"
            ) from exc
        self.min_weights_version = version
        self._last_push_step = step
        self._phase_seconds["push"] = time.perf_counter() - started
        log.info("tokencredit: teacher weights of step %d loaded as version %d", step, version)

    def _initial_policy(self) -> torch.nn.Module:
        """The policy's starting weights, reloaded from the folder the model came from."""
        from transformers import AutoModelForCausalLM

        model = self.accelerator.unwrap_model(self.model)
        path = getattr(model.config, "_name_or_path", "")
        if not path or not os.path.isdir(path):
            raise TeacherCreditError(
                f"resuming {self.args.credit_method!r} needs its teacher's initial policy, but the "
                f"model's source {path!r} is not a local folder to reload it from"
            )
        return AutoModelForCausalLM.from_pretrained(path, dtype=model.dtype)

    # ---- checkpoints -----------------------------------------------------------------------

    def credit_checkpoint(self) -> dict[str, Any]:
        """What a resumed run needs: the method state (AntiSD's gate) and the call count. The
        weights version is left out: a resumed run pushes its weights before its first batch."""
        return {
            "method": self.args.credit_method,
            "state": self.credit_state,
            "calls": self.credit_calls,
        }

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = os.path.join(
                self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}"
            )
            with open(os.path.join(folder, CHECKPOINT_FILE), "w") as f:
                json.dump(self.credit_checkpoint(), f)
            if self._ema is not None:  # SDPO's EMA teacher continues on resume
                self._ema.save_pretrained(os.path.join(folder, EMA_FOLDER))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = os.path.join(checkpoint, CHECKPOINT_FILE)
        if not os.path.exists(path):
            raise TeacherCreditError(
                f"{path} is missing: this checkpoint was not written by TokenCreditGRPOTrainer, "
                "and resuming without the method state would restart AntiSD's gate silently"
            )
        with open(path) as f:
            saved = json.load(f)
        if saved.get("method") != self.args.credit_method:
            raise TeacherCreditError(
                f"checkpoint {checkpoint} was trained with credit_method={saved.get('method')!r}, "
                f"not {self.args.credit_method!r}"
            )
        if self._ema is not None:
            from transformers import AutoModelForCausalLM

            ema_path = os.path.join(checkpoint, EMA_FOLDER)
            if not os.path.isdir(ema_path):
                raise TeacherCreditError(f"{ema_path} is missing: SDPO's EMA teacher cannot resume")
            saved_ema = AutoModelForCausalLM.from_pretrained(ema_path, dtype=self._ema.dtype)
            self._ema.load_state_dict(saved_ema.state_dict())
        self.credit_state = saved.get("state")
        self.credit_calls = int(saved.get("calls", 0))
        log.info("tokencredit: method state restored from %s (%d calls)", path, self.credit_calls)
