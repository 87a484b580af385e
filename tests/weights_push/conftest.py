"""Fixtures of the weights-push tests: two real hf replicas with API and admin keys, seeded
perturbations of the embedded model (each version's weights differ enough to tell apart), and a
check after every test that this process left no shared-memory segment behind."""

from __future__ import annotations

import gc
import os
from pathlib import Path

import pytest
import torch

from client.launcher import ServerProcess, start_all
from proto.weights_push import SHM_DIR, SHM_PREFIX
from server.settings import DEFAULT_MODEL_DIR

API_KEY, ADMIN_KEY = "push-api-key", "push-admin-key"


@pytest.fixture(scope="session")
def replica_env(server_env):
    """``replica_env(weights_root, backend="hf")``: a replica's env. The model is the embedded one
    whatever TC_TEST_MODEL says: the pushes are perturbations of it."""

    def env(weights_root: Path, backend: str = "hf") -> dict[str, str]:
        return server_env(
            TC_MODEL=str(DEFAULT_MODEL_DIR),
            TC_BACKEND=backend,
            TC_LOG_LEVEL="info",
            TC_API_KEYS=API_KEY,
            TC_ADMIN_KEYS=ADMIN_KEY,
            TC_WEIGHTS_ROOT=str(weights_root),
            OMP_NUM_THREADS="1",
        )

    return env


@pytest.fixture(scope="module")
def weights_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("push-weights-root")


@pytest.fixture(scope="module")
def replicas(tmp_path_factory, weights_root, replica_env):
    logs = tmp_path_factory.mktemp("push-logs")
    procs = [
        ServerProcess(env=replica_env(weights_root), log_path=logs / f"replica-{i}.log")
        for i in range(2)
    ]
    yield start_all(procs)
    for p in procs:
        p.stop()


@pytest.fixture(scope="module")
def model():
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    return AutoModelForCausalLM.from_pretrained(str(DEFAULT_MODEL_DIR), dtype=torch.float32).eval()


def perturbed(model, seed: int, scale: float = 0.05):
    """The model's parameters (``named_parameters``: a tied LM head once) plus seeded Gaussian
    noise: a new "policy" per seed, as a trainer would hold it."""
    gen = torch.Generator().manual_seed(seed)
    return {
        name: (t.detach() + scale * torch.randn(t.shape, generator=gen))
        for name, t in model.named_parameters()
    }


def segments_of(pid: int) -> list[str]:
    """Names of the shared-memory segments a trainer process ``pid`` created and left."""
    prefix = f"{SHM_PREFIX}{pid}-"
    return (
        sorted(p.name for p in Path(SHM_DIR).glob(f"{prefix}*")) if Path(SHM_DIR).is_dir() else []
    )


@pytest.fixture(autouse=True)
def no_segment_left_behind():
    """Every push of a test, taken or refused, unlinks its segment (and probe) before returning.

    Collected first: a client an earlier test left unclosed (a trainer holding one, in a
    reference cycle) frees its spare segment when it is garbage-collected."""
    gc.collect()
    assert segments_of(os.getpid()) == [], "an earlier test left a reachable push segment"
    yield
    assert segments_of(os.getpid()) == []
