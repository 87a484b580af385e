"""Shared fixtures: the real model, and real servers on real ports.

Servers are session-scoped subprocesses (``server.launcher.ServerProcess``) running
``uvicorn server.app:app`` on the embedded model. ``server`` is parametrised over the backends
present: ``hf`` always, ``vllm`` when vllm imports (set ``TC_TEST_BACKENDS=hf`` to pick).
``TC_TEST_DEVICE=cuda`` runs the servers on a GPU (reference numbers stay on the CPU).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from server.launcher import ServerProcess
from server.settings import DEFAULT_MODEL_DIR


def _model_path() -> str:
    return os.environ.get("TC_TEST_MODEL") or str(DEFAULT_MODEL_DIR)


def _backends() -> list[str]:
    chosen = os.environ.get("TC_TEST_BACKENDS")
    if chosen:
        return [b.strip() for b in chosen.split(",") if b.strip()]
    return ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") else [])


@pytest.fixture(scope="session")
def model_path() -> str:
    return _model_path()


@pytest.fixture(scope="session")
def hf_model(model_path):
    """The model and tokenizer loaded independently of the server, for reference numbers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(model_path)


def start_server(tmp_path_factory, name: str, env: dict[str, str]) -> ServerProcess:
    log = Path(tmp_path_factory.mktemp(name)) / "server.log"
    base = {
        "TC_MODEL": _model_path(),
        "TC_DEVICE": os.environ.get("TC_TEST_DEVICE", "cpu"),
        "TC_DTYPE": "float32",
        "TC_LOG_LEVEL": "warning",
    }
    return ServerProcess(env={**base, **env}, log_path=log).start()


@pytest.fixture(scope="session", params=_backends())
def server(request, tmp_path_factory):
    """An open server (no keys) on each backend present."""
    backend = request.param
    if backend == "vllm":
        request.applymarker(pytest.mark.vllm)
    weights_root = tmp_path_factory.mktemp(f"weights-{backend}")
    proc = start_server(
        tmp_path_factory,
        f"server-{backend}",
        {"TC_BACKEND": backend, "TC_WEIGHTS_ROOT": str(weights_root)},
    )
    proc.backend = backend
    proc.weights_root = weights_root
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def hf_server(tmp_path_factory):
    """The hf backend alone (for tests of hf-only features: temperature, exact entropy)."""
    weights_root = tmp_path_factory.mktemp("weights-hf-only")
    proc = start_server(tmp_path_factory, "server-hf-only", {"TC_WEIGHTS_ROOT": str(weights_root)})
    proc.weights_root = weights_root
    yield proc
    proc.stop()


API_KEY, ADMIN_KEY = "test-key-123", "admin-key-456"


@pytest.fixture(scope="session")
def strict_server(tmp_path_factory):
    """API keys on, a 64 KiB body limit and a one-request queue (401/403/413/429 paths)."""
    weights_root = tmp_path_factory.mktemp("weights-strict")
    proc = start_server(
        tmp_path_factory,
        "server-strict",
        {
            "TC_API_KEYS": API_KEY,
            "TC_ADMIN_KEYS": ADMIN_KEY,
            "TC_MAX_BODY_BYTES": str(64 * 1024),
            "TC_MAX_QUEUE": "1",
            "TC_MAX_BATCH_TOKENS": "256",
            "TC_BATCH_WAIT_MS": "0",
            "TC_WEIGHTS_ROOT": str(weights_root),
        },
    )
    proc.weights_root = weights_root
    proc.api_key, proc.admin_key = API_KEY, ADMIN_KEY
    yield proc
    proc.stop()
