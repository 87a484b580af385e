"""Teacher credit inside OpenRLHF: the wrappers the hook puts on its classes.

``RemoteExperienceMaker.compute_advantages_and_returns`` runs OpenRLHF's own code first (length
penalties on ``experience.rewards``, group statistics and logs), then replaces ``advantages`` and
``returns`` with the teacher's per-token advantages of the step's batch, with the run's ``step``
and the method ``state`` of the previous call (AntiSD's gate). Whitening that OpenRLHF applied to
its own advantages is discarded with them: the teacher's numbers reach the loss unscaled.

A step's call (`sharded`) scores the teacher on every replica at once and runs the method's
batch-wide math once. The client's transport retries blips and fails over; `client.retry_within`
then tries the whole call again for ``TOKENCREDIT_STEP_RETRY`` seconds (a replica restarting),
logging each wait, and a 409 from a replica that lost the run's weights re-syncs them
(`weights`). Advantages that are not finite end the step; none is ever filled in.

The method state is written into every checkpoint OpenRLHF saves (regular and best) and restored
on resume. Per-step numbers go into ``experience.info`` under ``tokencredit/``, which OpenRLHF
averages into the step's logs (console, wandb, tensorboard).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from typing import Any

import numpy as np
import torch

from client import (
    AdvantagesResult,
    RetryPolicy,
    StepRetry,
    TeacherClient,
    Timeout,
    TokenCreditError,
    retry_within,
)
from trainer.openrlhf.checks import UnsupportedConfig, check_args
from trainer.openrlhf.config import PluginConfig
from trainer.openrlhf.experiences import Batch, build_batch, write_advantages
from trainer.openrlhf.push import ActorGroupPush
from trainer.openrlhf.sharded import sharded_advantages
from trainer.openrlhf.weights import TeacherWeights, WeightsError

log = logging.getLogger("tokencredit.openrlhf")

# Attribute on the experience maker: the global step of the batch being made (set by the
# train_step wrapper; OpenRLHF does not pass it down).
STEP_ATTR = "_tokencredit_step"
WRAPPED = "__tokencredit_wrapped__"
# Key in OpenRLHF's checkpoint ``client_states``: the method state survives a resume.
CHECKPOINT_KEY = "tokencredit"
INFO_PREFIX = "tokencredit/"

__all__ = ["NonFiniteAdvantages", "TeacherCredit", "UnsupportedConfig"]


class NonFiniteAdvantages(ValueError):
    """The pool answered NaN or infinite advantages; they never reach the experiences."""


class TeacherCredit:
    """Per-process state of a run: the client, the method ``state``, the run's weights."""

    def __init__(
        self,
        config: PluginConfig,
        client: TeacherClient | None = None,
        weights: TeacherWeights | None = None,
    ):
        self.config = config
        self._client = client
        self._weights = weights
        self.state: dict[str, Any] | None = None  # from the previous /v1/advantages answer
        self.calls = 0
        self.last: AdvantagesResult | None = None
        self.checked = False  # OpenRLHF's args checked (once per process)
        self.actor_push: ActorGroupPush | None = None  # push transport: the policy's actors

    @property
    def client(self) -> TeacherClient:
        if self._client is None:
            self._client = TeacherClient(
                list(self.config.urls),
                api_key=self.config.api_key,
                admin_key=self.config.admin_key,
                timeout=Timeout(self.config.timeout, connect=5.0),
                retry=RetryPolicy(retries=self.config.retries),
                # two requests in flight per replica: one computing, one queued behind it
                max_concurrency=2 * len(self.config.urls),
            )
        return self._client

    @property
    def weights(self) -> TeacherWeights | None:
        """The run's weights on the pool; None when the run does not sync them."""
        if self._weights is None and self.config.syncing:
            push = self.config.weights_sync == "push"
            self._weights = TeacherWeights(
                self.config.urls,
                self.config.weights_prefix or "",
                base_path=self.config.base_weights,
                admin_key=self.config.admin_key,
                api_key=self.config.api_key,
                prune=self.config.prune_checkpoints,
                push=self._push_from_actor if push else None,
            )
        return self._weights

    def bind_actor_group(self, group: Any, get: Any) -> None:
        """The policy's actor group (OpenRLHF's ``RayActorGroup``) and ``ray.get``: where the
        push transport's weights come from."""
        if group is not None and (self.actor_push is None or self.actor_push.group is not group):
            self.actor_push = ActorGroupPush(group, get)

    def _push_from_actor(self, urls: Any, version: int) -> None:
        if self.actor_push is None:
            raise WeightsError(
                "TOKENCREDIT_WEIGHTS_SYNC=push needs OpenRLHF's actor group to push from, and "
                "none was seen (the plugin binds it in the experience maker and the trainer)"
            )
        self.actor_push(urls, version)

    @property
    def min_weights_version(self) -> int | None:
        return self.weights.required if self.weights is not None else None

    def check(self, args: Any) -> None:
        """Refuse OpenRLHF settings the teacher's advantages would drop or bias (`checks`)."""
        if not self.checked:
            check_args(args, self.config)
            self.checked = True

    def apply(
        self,
        experiences: list[Any],
        n_samples_per_prompt: int,
        step: int,
        ckpt_path: str | None = None,
    ) -> AdvantagesResult:
        """One step: groups out, advantages back into ``experiences`` (in place)."""
        batch = build_batch(
            experiences, n_samples_per_prompt, send_student=self.config.student == "trainer"
        )
        weights = self.weights
        if weights is not None and weights.required is None:
            # the run's own weights before its first call
            self._persist(lambda: weights.start(step, ckpt_path))
        result = self._persist(
            lambda: self._call(batch, step),
            recover=lambda exc: weights is not None and weights.resync(),
        )
        advantages = result.flat()
        check_finite(advantages)
        write_advantages(experiences, batch, advantages)
        write_info(experiences, batch, result)
        self.state = result.state
        self.calls += 1
        self.last = result
        s = result.stats
        log.info(
            "tokencredit step %d: %s on %d rollouts / %d tokens in %d requests, weights_version "
            "%d, gate %s, mean |signal| %s, masked %d",
            step,
            result.method,
            s.rollouts,
            s.tokens,
            result.chunks,
            result.weights_version,
            s.gate,
            s.mean_abs_signal,
            s.masked_rollouts,
        )
        return result

    def _persist(self, call, recover=None):
        """``call()`` tried again for ``step_retry`` seconds after the transport gave up."""
        return retry_within(
            call,
            StepRetry(seconds=self.config.step_retry),
            on_wait=self._log_wait,
            recover=recover,
        )

    def _call(self, batch: Batch, step: int) -> AdvantagesResult:
        return sharded_advantages(
            self.client,
            self.config.method,
            batch.groups,
            shards=len(self.config.urls),
            params=self.config.params,
            step=step,
            state=self.state,
            seed=self.config.seed + step,
            min_weights_version=self.min_weights_version,
            timeout=self.config.timeout,
            tokens_per_second=self.config.tokens_per_second,
        )

    @staticmethod
    def _log_wait(attempt: int, seconds: float, error: TokenCreditError) -> None:
        log.warning(
            "tokencredit: attempt %d of the step's call failed (%s: %s); trying again in %.0f s",
            attempt,
            type(error).__name__,
            error,
            seconds,
        )

    def checkpoint_state(self) -> dict[str, Any]:
        """What a resumed run needs: the method state (AntiSD's gate) and the call count.
        The weights version is left out: a resumed run loads its checkpoint under new versions
        (`weights`)."""
        return {"state": self.state, "calls": self.calls}

    def restore(self, saved: dict[str, Any]) -> None:
        self.state = saved.get("state")
        self.calls = int(saved.get("calls", 0))
        log.info("tokencredit: method state restored from the checkpoint (%d calls)", self.calls)

    def sync_weights(self, args: Any, global_step: int) -> None:
        """After step ``global_step``: push the actor's weights to every replica (push), or
        load the HF checkpoint OpenRLHF saved as ``{ckpt.path}/global_step{N}_hf`` (disk)."""
        weights = self.weights
        if weights is None:
            return
        if weights.transport == "push":
            self._persist(lambda: weights.publish(global_step))
            return
        if not args.ckpt.save_hf or global_step % args.ckpt.save_steps != 0:
            return
        self._persist(lambda: weights.publish(global_step, args.ckpt.path))


def check_finite(advantages: list[Any]) -> None:
    for i, adv in enumerate(advantages):
        if not np.isfinite(np.asarray(adv, dtype=np.float64)).all():
            raise NonFiniteAdvantages(
                f"the pool answered non-finite advantages for rollout {i} of the step; "
                "nothing was written into the experiences"
            )


def write_info(experiences: list[Any], batch: Batch, result: AdvantagesResult) -> None:
    """Per-sample ``experience.info`` tensors, averaged into OpenRLHF's step logs."""
    s = result.stats
    constant = {"gate": s.gate, "mean_abs_signal": s.mean_abs_signal}
    constant["masked_fraction"] = s.masked_rollouts / max(s.rollouts, 1)
    if s.teacher_entropy is not None:
        constant["teacher_entropy"] = s.teacher_entropy
    means = [np.zeros(len(rows), np.float32) for rows in batch.rows]
    for (e, b), adv in zip(batch.slots, result.flat()):
        means[e][b] = float(np.mean(adv)) if len(adv) else 0.0
    for exp, mean_B in zip(experiences, means):
        B = len(mean_B)
        exp.info[INFO_PREFIX + "advantage_mean"] = torch.from_numpy(mean_B)
        for name, value in constant.items():
            if value is not None:
                exp.info[INFO_PREFIX + name] = torch.full((B,), float(value))


def check_supported(maker: Any) -> None:
    """Refuse OpenRLHF settings whose effect lives in the advantages this plugin replaces."""
    args = maker.strategy.args
    if maker.advantage_estimator == "gae":
        raise UnsupportedConfig(
            "tokencredit replaces the advantages, and --algo.advantage.estimator gae needs a "
            "critic's values for them: use dr_grpo, rloo or group_norm"
        )
    if maker.initial_model_group is not None and not args.algo.kl.use_loss:
        raise UnsupportedConfig(
            "with --algo.kl.init_coef > 0 and no --algo.kl.use_loss, OpenRLHF folds the KL "
            "penalty into the advantages, which tokencredit replaces: add --algo.kl.use_loss "
            "(KL as a loss term) or set --algo.kl.init_coef 0"
        )
    get_plugin().check(args)


# ---- the process-wide plugin and the wrappers ----------------------------------------------

_lock = threading.Lock()
_plugin: TeacherCredit | None = None


def get_plugin() -> TeacherCredit:
    """This process's `TeacherCredit`, configured from the environment on first use."""
    global _plugin
    with _lock:
        if _plugin is None:
            _plugin = TeacherCredit(PluginConfig.from_env())
        return _plugin


def set_plugin(plugin: TeacherCredit | None) -> None:
    """Replace this process's plugin (tests; a driver that builds its own client)."""
    global _plugin
    with _lock:
        _plugin = plugin


def _ray_get(original: Any):
    """``ray.get`` as the wrapped OpenRLHF function's own module sees it (under decorators such
    as ``torch.no_grad``)."""
    module_globals = inspect.unwrap(original).__globals__
    return lambda refs: module_globals["ray"].get(refs)


def wrap_compute_advantages_and_returns(original):
    @functools.wraps(original)
    def compute_advantages_and_returns(self, experiences):
        check_supported(self)
        experiences = original(self, experiences)
        plugin = get_plugin()
        plugin.bind_actor_group(getattr(self, "actor_model_group", None), _ray_get(original))
        step = getattr(self, STEP_ATTR, None)
        args = self.strategy.args
        plugin.apply(
            experiences,
            args.rollout.n_samples_per_prompt,
            plugin.calls if step is None else int(step),
            ckpt_path=getattr(getattr(args, "ckpt", None), "path", None),
        )
        return experiences

    setattr(compute_advantages_and_returns, WRAPPED, True)
    return compute_advantages_and_returns


def wrap_train_step(original):
    @functools.wraps(original)
    def train_step(self, rollout_samples, global_step):
        setattr(self.experience_maker, STEP_ATTR, global_step)
        return original(self, rollout_samples, global_step)

    setattr(train_step, WRAPPED, True)
    return train_step


def wrap_save_logs_and_checkpoints(original):
    @functools.wraps(original)
    def save_logs_and_checkpoints(self, global_step, logs_dict=None, client_states=None):
        plugin = get_plugin()
        # In place: `fit` hands the same dict to save_best_checkpoint, whose checkpoint may
        # become `latest` (and so the one a resume reads).
        client_states = {} if client_states is None else client_states
        client_states[CHECKPOINT_KEY] = plugin.checkpoint_state()
        out = original(self, global_step, logs_dict, client_states)
        # fit calls this after every train_step (whose last act is OpenRLHF's own broadcast to
        # its vLLM engines): the push transport sends the step's weights here too
        plugin.bind_actor_group(getattr(self, "actor_model_group", None), _ray_get(original))
        plugin.sync_weights(self.args, global_step)
        return out

    setattr(save_logs_and_checkpoints, WRAPPED, True)
    return save_logs_and_checkpoints


def wrap_save_best_checkpoint(original):
    @functools.wraps(original)
    def save_best_checkpoint(self, eval_metrics, global_step, client_states=None):
        client_states = {} if client_states is None else client_states
        client_states[CHECKPOINT_KEY] = get_plugin().checkpoint_state()
        return original(self, eval_metrics, global_step, client_states)

    setattr(save_best_checkpoint, WRAPPED, True)
    return save_best_checkpoint


def wrap_init_checkpoint_states(original):
    @functools.wraps(original)
    def init_checkpoint_states(self):
        states = original(self)
        saved = states.get(CHECKPOINT_KEY) if isinstance(states, dict) else None
        if saved:
            get_plugin().restore(saved)
        return states

    setattr(init_checkpoint_states, WRAPPED, True)
    return init_checkpoint_states


def patch_experience_maker(module: Any) -> None:
    """Wrap ``module.RemoteExperienceMaker.compute_advantages_and_returns`` (idempotent)."""
    cls = module.RemoteExperienceMaker
    if not getattr(cls.compute_advantages_and_returns, WRAPPED, False):
        cls.compute_advantages_and_returns = wrap_compute_advantages_and_returns(
            cls.compute_advantages_and_returns
        )


TRAINER_WRAPPERS = {
    "train_step": wrap_train_step,
    "save_logs_and_checkpoints": wrap_save_logs_and_checkpoints,
    "save_best_checkpoint": wrap_save_best_checkpoint,
    "init_checkpoint_states": wrap_init_checkpoint_states,
}


def patch_trainer(module: Any) -> None:
    """Wrap ``module.BasePPOTrainer``'s ``TRAINER_WRAPPERS`` methods (idempotent)."""
    cls = module.BasePPOTrainer
    for name, wrap in TRAINER_WRAPPERS.items():
        if not getattr(getattr(cls, name), WRAPPED, False):
            setattr(cls, name, wrap(getattr(cls, name)))
