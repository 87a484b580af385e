"""Teacher credit inside OpenRLHF: the wrappers the hook puts on its classes.

``RemoteExperienceMaker.compute_advantages_and_returns`` runs OpenRLHF's own code first (length
penalties on ``experience.rewards``, group statistics and logs), then replaces ``advantages`` and
``returns`` with the teacher's per-token advantages of the step's batch: one ``/v1/advantages``
call through `client.TeacherClient` with the run's ``step`` and the method ``state`` of the
previous call (AntiSD's gate). Whitening that OpenRLHF applied to its own advantages is
discarded with them: the teacher's numbers reach the loss unscaled. The method state is saved in
OpenRLHF's checkpoint ``client_states`` and restored from it on resume.

Failures raise. The client's transport retries connection errors, 429 and 502-504 and fails over
between replicas; when it gives up, its exception ends the step. Nothing here retries, and no
advantage is ever filled in.
"""

from __future__ import annotations

import functools
import logging
import posixpath
import threading
from typing import Any

from client import AdvantagesResult, RetryPolicy, TeacherClient, Timeout
from trainer.openrlhf.config import PluginConfig
from trainer.openrlhf.experiences import build_batch, write_advantages

log = logging.getLogger("tokencredit.openrlhf")

# Attribute on the experience maker: the global step of the batch being made (set by the
# train_step wrapper; OpenRLHF does not pass it down).
STEP_ATTR = "_tokencredit_step"
WRAPPED = "__tokencredit_wrapped__"
# Key in OpenRLHF's checkpoint ``client_states``: the method state survives a resume.
CHECKPOINT_KEY = "tokencredit"


class UnsupportedConfig(ValueError):
    """An OpenRLHF option whose effect the teacher's advantages would silently drop."""


class TeacherCredit:
    """Per-process state of a run: the client, the method ``state``, the weights version."""

    def __init__(self, config: PluginConfig, client: TeacherClient | None = None):
        self.config = config
        self._client = client
        self.state: dict[str, Any] | None = None  # from the previous /v1/advantages answer
        self.min_weights_version: int | None = None  # set by weight syncing
        self.calls = 0
        self.last: AdvantagesResult | None = None

    @property
    def client(self) -> TeacherClient:
        if self._client is None:
            self._client = TeacherClient(
                list(self.config.urls),
                api_key=self.config.api_key,
                admin_key=self.config.admin_key,
                timeout=Timeout(self.config.timeout, connect=5.0),
                retry=RetryPolicy(retries=self.config.retries),
            )
        return self._client

    def apply(
        self, experiences: list[Any], n_samples_per_prompt: int, step: int
    ) -> AdvantagesResult:
        """One step: groups out, advantages back into ``experiences`` (in place)."""
        batch = build_batch(experiences, n_samples_per_prompt)
        result = self.client.advantages(
            self.config.method,
            batch.groups,
            params=self.config.params,
            step=step,
            state=self.state,
            seed=self.config.seed + step,
            min_weights_version=self.min_weights_version,
        )
        write_advantages(experiences, batch, result.flat())
        self.state = result.state
        self.calls += 1
        self.last = result
        s = result.stats
        log.info(
            "tokencredit step %d: %s on %d rollouts / %d tokens, weights_version %d, gate %s, "
            "mean |signal| %s, masked %d",
            step,
            result.method,
            s.rollouts,
            s.tokens,
            result.weights_version,
            s.gate,
            s.mean_abs_signal,
            s.masked_rollouts,
        )
        return result

    def checkpoint_state(self) -> dict[str, Any]:
        """What a resumed run needs: the method state (AntiSD's gate) and the call count.
        The weights version is left out: a restarted teacher may serve older weights until the
        next checkpoint is synced, and requiring the old version would fail every step."""
        return {"state": self.state, "calls": self.calls}

    def restore(self, saved: dict[str, Any]) -> None:
        self.state = saved.get("state")
        self.calls = int(saved.get("calls", 0))
        log.info("tokencredit: method state restored from the checkpoint (%d calls)", self.calls)

    def sync_weights(self, args: Any, global_step: int) -> None:
        """After OpenRLHF saved ``{ckpt.path}/global_step{N}_hf``: load it on every replica."""
        prefix = self.config.weights_prefix
        if prefix is None or not args.ckpt.save_hf or global_step % args.ckpt.save_steps != 0:
            return
        path = (
            posixpath.join(prefix, f"global_step{global_step}_hf")
            if prefix
            else (f"global_step{global_step}_hf")
        )
        answer = self.client.load_weights(path, version=global_step)
        self.min_weights_version = answer.weights_version
        log.info("tokencredit: teacher weights %s loaded as version %d", path, global_step)


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


def wrap_compute_advantages_and_returns(original):
    @functools.wraps(original)
    def compute_advantages_and_returns(self, experiences):
        check_supported(self)
        experiences = original(self, experiences)
        plugin = get_plugin()
        step = getattr(self, STEP_ATTR, None)
        plugin.apply(
            experiences,
            self.strategy.args.rollout.n_samples_per_prompt,
            plugin.calls if step is None else int(step),
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
        client_states = dict(client_states or {})  # saved with the actor's checkpoint
        client_states[CHECKPOINT_KEY] = plugin.checkpoint_state()
        out = original(self, global_step, logs_dict, client_states)
        plugin.sync_weights(self.args, global_step)
        return out

    setattr(save_logs_and_checkpoints, WRAPPED, True)
    return save_logs_and_checkpoints


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
    "init_checkpoint_states": wrap_init_checkpoint_states,
}


def patch_trainer(module: Any) -> None:
    """Wrap ``module.BasePPOTrainer``'s ``TRAINER_WRAPPERS`` methods (idempotent)."""
    cls = module.BasePPOTrainer
    for name, wrap in TRAINER_WRAPPERS.items():
        if not getattr(getattr(cls, name), WRAPPED, False):
            setattr(cls, name, wrap(getattr(cls, name)))
