"""Ray's ``worker_process_setup_hook``: ``runtime_env={"worker_process_setup_hook":
"trainer.openrlhf.hook.setup"}`` runs `setup` at the start of every worker process of the job.

OpenRLHF keeps deepspeed out of its vLLM workers on purpose (``openrlhf/trainer/ray/__init__.py``:
"No implicit imports of deepspeed here to avoid vllm environment gets contaminated"), and the
experience maker imports deepspeed. So `setup` imports nothing of OpenRLHF: it reads the
configuration (a bad ``TOKENCREDIT_*`` variable fails the worker at start, not at step 1) and
patches these modules *when something imports them* (the trainer's and the actors' processes):

    openrlhf.trainer.ppo_utils.experience_maker  RemoteExperienceMaker.compute_advantages_and_returns
    openrlhf.trainer.ppo_trainer                 BasePPOTrainer.train_step,
                                                 .save_logs_and_checkpoints, .save_best_checkpoint,
                                                 .init_checkpoint_states
    openrlhf.trainer.ray.launcher                BaseModelActor gets `push.PUSH_METHOD` (the actor
                                                 end of TOKENCREDIT_WEIGHTS_SYNC=push)

A module already imported is patched at once. Ray workers start with Python's root logger at
WARNING and no handler, so `setup` also gives the plugin's logger one (INFO, to stderr, which
Ray forwards to the driver's console).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import threading
from collections.abc import Callable
from typing import Any

from trainer.openrlhf import plugin, push

TARGETS: dict[str, Callable[[Any], None]] = {
    "openrlhf.trainer.ppo_utils.experience_maker": plugin.patch_experience_maker,
    "openrlhf.trainer.ppo_trainer": plugin.patch_trainer,
    "openrlhf.trainer.ray.launcher": push.install_push_method,
}


class _PatchingLoader(importlib.abc.Loader):
    """Runs the real loader, then the patch."""

    def __init__(self, loader: importlib.abc.Loader, patch: Callable[[Any], None]):
        self.loader = loader
        self.patch = patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        self.patch(module)

    def __getattr__(self, name: str) -> Any:  # get_source, is_package, ... of the real loader
        return getattr(self.loader, name)


class PatchOnImport(importlib.abc.MetaPathFinder):
    """A ``sys.meta_path`` finder that hands the targets' real specs a patching loader."""

    def __init__(self, targets: dict[str, Callable[[Any], None]]):
        self.targets = targets
        self._busy = threading.local()

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.targets or getattr(self._busy, "name", None) == fullname:
            return None
        self._busy.name = fullname  # the lookup below must not find this finder again
        try:
            spec = importlib.util.find_spec(fullname)
        finally:
            self._busy.name = None
        if spec is None or spec.loader is None:
            return None
        spec.loader = _PatchingLoader(spec.loader, self.targets[fullname])
        return spec


_installed = threading.Lock()


def install(targets: dict[str, Callable[[Any], None]] | None = None) -> None:
    """Patch the targets now if imported, else when imported (idempotent)."""
    targets = TARGETS if targets is None else targets
    with _installed:
        for name, patch in targets.items():
            if name in sys.modules:
                patch(sys.modules[name])
        if not any(isinstance(f, PatchOnImport) for f in sys.meta_path):
            sys.meta_path.insert(0, PatchOnImport(targets))


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def enable_logging(level: int = logging.INFO) -> logging.Logger:
    """The plugin's logger at ``level`` with a stderr handler (idempotent)."""
    logger = logging.getLogger("tokencredit")
    logger.setLevel(level)
    if not any(getattr(h, "_tokencredit", False) for h in logger.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._tokencredit = True
        logger.addHandler(handler)
    return logger


def setup() -> None:
    """The ``worker_process_setup_hook``: configuration checked, logging on, patches armed."""
    plugin.get_plugin()
    enable_logging()
    install()
