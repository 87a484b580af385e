"""OpenRLHF on CPU: its real modules, with the GPU-only and heavy imports stubbed.

As OpenRLHF's own tests do (``tests/test_reward_shaping.py``, ``tests/test_agent.py``), modules
that need a GPU or are absent here (ray, vllm, deepspeed, flash_attn, and whatever of OpenRLHF's
pinned dependencies is not installed) are replaced by stubs while
``openrlhf.trainer.ppo_utils.experience_maker`` and its neighbours import; then ``sys.modules`` is
put back, so no other test sees a stub. Stub modules carry a ``__spec__`` (transformers'
``find_spec`` checks raise without one).

Without openrlhf every test here is skipped, except under ``CI=true``, where that is a failure.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types
from types import SimpleNamespace
from unittest.mock import MagicMock

import pytest

ALWAYS_STUBBED = ("ray", "vllm", "deepspeed", "flash_attn")  # GPU-only (or a cluster)
STUBBED_IF_MISSING = (  # OpenRLHF's pins that --no-deps leaves out
    "peft",
    "bitsandbytes",
    "datasets",
    "torchdata",
    "wandb",
    "tensorboard",
    "accelerate",
    "optimum",
    "loralib",
    "optree",
    "torchmetrics",
    "jsonlines",
    "einops",
    "transformers_stream_generator",
    "liger_kernel",
)
MODULES = (
    "openrlhf.trainer.ppo_utils.experience",
    "openrlhf.trainer.ppo_utils.experience_maker",
    "openrlhf.trainer.ppo_utils.samples_generator",
    "openrlhf.trainer.ppo_trainer",
    "openrlhf.models.actor",
    "openrlhf.cli.train_ppo_ray",
    "openrlhf.trainer.ray.launcher",
)


@pytest.fixture(scope="session", autouse=True)
def require_openrlhf():
    if importlib.util.find_spec("openrlhf") is None:
        reason = "openrlhf is not installed (bash scripts/install_openrlhf.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the OpenRLHF tests", pytrace=False)
        pytest.skip(reason)


class _StubModule(types.ModuleType):
    """A package whose every attribute is a MagicMock (``ray.remote``, ``deepspeed.comm``...)."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        value = MagicMock(name=f"{self.__name__}.{name}")
        setattr(self, name, value)
        return value


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self, roots: set[str]):
        self.roots = roots

    def find_spec(self, fullname, path=None, target=None):
        if fullname.split(".")[0] in self.roots:
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _StubModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module) -> None:
        pass


@pytest.fixture(scope="session")
def stub_roots() -> set[str]:
    """Top-level modules replaced by stubs: the GPU-only ones, and pins that are not installed."""
    return set(ALWAYS_STUBBED) | {
        m for m in STUBBED_IF_MISSING if importlib.util.find_spec(m) is None
    }


@pytest.fixture(scope="session")
def orlhf(require_openrlhf, stub_roots) -> SimpleNamespace:
    """OpenRLHF's real modules, imported with stubs in place; ``sys.modules`` restored after."""
    roots = stub_roots
    saved = {k: v for k, v in sys.modules.items() if k.split(".")[0] in roots | {"openrlhf"}}
    for name in saved:
        del sys.modules[name]
    finder = _StubFinder(roots)
    sys.meta_path.insert(0, finder)
    try:
        loaded = {name: importlib.import_module(name) for name in MODULES}
    finally:
        sys.meta_path.remove(finder)
        for name in [k for k in sys.modules if k.split(".")[0] in roots | {"openrlhf"}]:
            del sys.modules[name]
        sys.modules.update(saved)
    return SimpleNamespace(
        Experience=loaded["openrlhf.trainer.ppo_utils.experience"].Experience,
        experience_maker=loaded["openrlhf.trainer.ppo_utils.experience_maker"],
        samples_generator=loaded["openrlhf.trainer.ppo_utils.samples_generator"],
        ppo_trainer=loaded["openrlhf.trainer.ppo_trainer"],
        Actor=loaded["openrlhf.models.actor"].Actor,
        train_ppo_ray=loaded["openrlhf.cli.train_ppo_ray"],
        launcher=loaded["openrlhf.trainer.ray.launcher"],
    )
