"""TRL integration on CPU: the real `trl` GRPOTrainer, the embedded model, a live server.

The server is this directory's own (module-scoped per test file would restart it; one per
session is enough): its weights are replaced by the trainers' pushes, so it is not shared with
tests that compare against the embedded model's numbers.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from server.settings import DEFAULT_MODEL_DIR


@pytest.fixture(scope="session", autouse=True)
def require_trl():
    if importlib.util.find_spec("trl") is None:
        reason = "trl is not installed (bash scripts/install_trl.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI must run the TRL tests", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def trl_server(tmp_path_factory, make_server):
    """An hf server whose TC_WEIGHTS_ROOT the trainers push into (the embedded model whatever
    TC_TEST_MODEL says: the trainers train it and push its weights)."""
    root = Path(tmp_path_factory.mktemp("trl-weights"))
    env = {
        "TC_MODEL": str(DEFAULT_MODEL_DIR),
        "TC_BACKEND": "hf",
        "TC_WEIGHTS_ROOT": str(root),
        "OMP_NUM_THREADS": "1",
    }
    proc = make_server("trl-server", **env).start()
    proc.weights_root = root
    yield proc
    proc.stop()


def _tiny_config(tmp_path, server, method: str, **overrides):
    """Two prompts x four samples, <= 16 new tokens: a real TRL step in about a second."""
    import torch

    from trainer.trl import TokenCreditConfig

    torch.set_num_threads(1)
    kw = dict(
        output_dir=str(tmp_path / "out"),
        credit_method=method,
        teacher_url=server.url,
        teacher_weights_root=str(server.weights_root) if server.weights_root else None,
        max_steps=2,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=16,
        learning_rate=1e-3,
        lr_scheduler_type="constant",
        logging_steps=1,
        save_strategy="no",
        shuffle_dataset=False,
        use_cpu=True,
        bf16=False,
        report_to="none",
        disable_tqdm=True,
        teacher_retries=1,
        seed=0,
    )
    kw.update(overrides)
    return TokenCreditConfig(**kw)


def _make_trainer(cfg, trainer_cls=None, reward=None, n_problems=16, **kw):
    from transformers import AutoTokenizer

    from trainer.trl import TokenCreditGRPOTrainer
    from trainer.trl.arith import arith_dataset, boxed_reward

    cls = trainer_cls or TokenCreditGRPOTrainer
    return cls(
        model=str(DEFAULT_MODEL_DIR),
        reward_funcs=reward or boxed_reward,
        args=cfg,
        train_dataset=arith_dataset(n_problems, seed=0),
        processing_class=AutoTokenizer.from_pretrained(str(DEFAULT_MODEL_DIR)),
        **kw,
    )


@pytest.fixture
def tiny_config(tmp_path, trl_server):
    """``tiny_config(method, **overrides)``: a `TokenCreditConfig` against ``trl_server``."""
    return lambda method, **kw: _tiny_config(tmp_path, trl_server, method, **kw)


@pytest.fixture
def config_for(tmp_path):
    """``config_for(server, method, **overrides)``: a `TokenCreditConfig` against ``server``
    (one with a ``weights_root`` attribute: None when it has no TC_WEIGHTS_ROOT)."""
    return lambda server, method, **kw: _tiny_config(tmp_path, server, method, **kw)


@pytest.fixture
def make_trainer():
    """``make_trainer(cfg, trainer_cls=None, reward=None, **kw)``: a trainer on the arith task."""
    return _make_trainer
