"""OpenRLHF settings the plugin refuses, each with what to set instead (docs/openrlhf.md).

One function, two callers: the launcher (on ``train_ppo_ray``'s arguments, before Ray starts)
and the first step (on OpenRLHF's parsed ``args``, for runs started without the launcher).

======================================  ====================================================
refused                                 why
======================================  ====================================================
``--algo.advantage.estimator gae``      needs a critic's values; the advantages are replaced
KL in the reward (no ``kl.use_loss``)   OpenRLHF folds it into the replaced advantages
``--rollout.temperature`` != 1          the actor's log-probs are at T, the teacher's at 1:
(methods that use the teacher)          u_t = log p_T - log p_S would mix two temperatures
a self-teacher method without syncing   the teacher must be the current policy: sync every
every step or ``student=server``        step (push, or HF checkpoints every step), or let the
                                        pool score both sides
dynamic filtering with AntiSD / HSD     drops the all-fail groups their credit relies on
images (``data.max_images_per_prompt``) /v1/advantages sends no images: the teacher is blind
LoRA with syncing                       the adapters are not the served model's weights
EMA with disk syncing                   the saved HF folder holds the EMA weights, not the
                                        policy that generated the rollouts (push sends the
                                        policy)
======================================  ====================================================
"""

from __future__ import annotations

from typing import Any

from trainer.openrlhf.config import PluginConfig

# Methods whose advantages read teacher log-probs (all but the reward-only GRPO family).
TEACHER_METHODS = frozenset({"opd", "opsd", "sdpo", "rlsd", "hsd", "antisd", "amrsd"})
# Methods whose teacher is the current policy under a richer context (OPD's is another model).
SELF_TEACHER_METHODS = TEACHER_METHODS - {"opd"}
# Methods whose credit comes from groups where every rollout failed (peer-less contexts).
NEEDS_ALL_FAIL_GROUPS = frozenset({"antisd", "hsd"})


class UnsupportedConfig(ValueError):
    """An OpenRLHF option whose effect the teacher's advantages would silently drop or bias."""


def _get(args: Any, path: str, default: Any) -> Any:
    for name in path.split("."):
        args = getattr(args, name, None)
        if args is None:
            return default
    return args


def check_args(args: Any, config: PluginConfig) -> None:
    """Raise `UnsupportedConfig` for the first refused combination in OpenRLHF's ``args``."""
    method = config.method
    syncing = config.syncing
    push = config.weights_sync == "push"
    if _get(args, "algo.advantage.estimator", "gae") == "gae":
        raise UnsupportedConfig(
            "tokencredit replaces the advantages, and --algo.advantage.estimator gae needs a "
            "critic's values for them: use dr_grpo, rloo or group_norm"
        )
    if float(_get(args, "algo.kl.init_coef", 0.0)) > 0 and not _get(
        args, "algo.kl.use_loss", False
    ):
        raise UnsupportedConfig(
            "with --algo.kl.init_coef > 0 and no --algo.kl.use_loss, OpenRLHF folds the KL "
            "penalty into the advantages, which tokencredit replaces: add --algo.kl.use_loss "
            "(KL as a loss term) or set --algo.kl.init_coef 0"
        )
    temperature = float(_get(args, "rollout.temperature", 1.0))
    if method in TEACHER_METHODS and temperature != 1.0:
        raise UnsupportedConfig(
            f"--rollout.temperature {temperature}: the actor's log-probs are at that temperature "
            f"but /v1/advantages scores the teacher at 1, which biases {method}'s u_t; sample "
            "at --rollout.temperature 1"
        )
    if method in SELF_TEACHER_METHODS and config.student != "server":
        every_step = push or (
            syncing and _get(args, "ckpt.save_hf", False) and _get(args, "ckpt.save_steps", -1) == 1
        )
        if not every_step:
            raise UnsupportedConfig(
                f"{method}'s teacher is the current policy: sync it every step (--push-weights, "
                "or --sync-weights with --ckpt.save_hf --ckpt.save_steps 1) or let the pool score "
                "the student too (--student server), so both sides come from one set of weights"
            )
    if method in NEEDS_ALL_FAIL_GROUPS and _get(args, "algo.dynamic_filtering_enable", False):
        raise UnsupportedConfig(
            f"--algo.dynamic_filtering_enable drops the all-fail groups {method}'s credit "
            "relies on: turn dynamic filtering off"
        )
    if int(_get(args, "data.max_images_per_prompt", 0)) > 0:
        raise UnsupportedConfig(
            "--data.max_images_per_prompt > 0: /v1/advantages sends token ids only, so the "
            "teacher would score image prompts without the images; text-only runs are supported"
        )
    if syncing and int(_get(args, "ds.lora.rank", 0)) > 0:
        raise UnsupportedConfig(
            "--ds.lora.rank > 0 with weight syncing: OpenRLHF's HF checkpoint holds only the "
            "LoRA adapters and its model's parameters carry PEFT's names, neither of which the "
            "teacher can load; train full weights or do not sync"
        )
    if syncing and not push and _get(args, "train.enable_ema", False):
        raise UnsupportedConfig(
            "--train.enable_ema with --sync-weights: OpenRLHF saves the EMA weights as the HF "
            "checkpoint, so the teacher would not be the policy that sampled the rollouts"
        )
