"""POST /v1/weights under load: every response's numbers belong to the version it reports.

A stream of identical scoring requests runs while new weights are loaded; each response must
equal, exactly, the reference numbers of the weights_version it carries. Failed loads (missing
folder, wrong shapes, escapes from TC_WEIGHTS_ROOT) keep serving the old weights.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time

import httpx
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

SEQS = [
    {"context_ids": [1, 2, 3, 4, 5], "target_ids": [6, 7, 8, 9, 10, 11]},
    {"context_ids": [12], "target_ids": [13, 14]},
]


def reference(model, seqs):
    out = []
    with torch.no_grad():
        for s in seqs:
            logp = (
                model(torch.tensor([s["context_ids"] + s["target_ids"]]))
                .logits[0]
                .float()
                .log_softmax(-1)
            )
            C = len(s["context_ids"])
            out.append(
                logp[C - 1 : C - 1 + len(s["target_ids"])]
                .gather(1, torch.tensor(s["target_ids"])[:, None])[:, 0]
                .numpy()
            )
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, model_path):
    root = tmp_path_factory.mktemp("weights-root")
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    torch.manual_seed(1)
    perturbed = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.05 * torch.randn_like(p))
    perturbed.save_pretrained(root / "step-1")
    AutoTokenizer.from_pretrained(model_path).save_pretrained(root / "step-1")
    cfg = base.config.to_dict()
    cfg.update(hidden_size=cfg["hidden_size"] * 2, head_dim=cfg.get("head_dim") or 32)
    Qwen3ForCausalLM(
        Qwen3Config(**{k: v for k, v in cfg.items() if k in Qwen3Config().to_dict()})
    ).save_pretrained(root / "wrong-shape")
    (root / "empty").mkdir()
    outside = tmp_path_factory.mktemp("outside")
    perturbed.save_pretrained(outside / "evil")
    os.symlink(outside / "evil", root / "escape")
    return root, {0: reference(base, SEQS), 1: reference(perturbed, SEQS)}


@pytest.fixture(scope="module")
def swap_server(checkpoints, make_server):
    root, _ = checkpoints
    with make_server("swap-server", TC_WEIGHTS_ROOT=str(root)) as server:
        yield server


def score(url):
    res = httpx.post(url + "/v1/logprobs", json={"sequences": SEQS}, timeout=60)
    res.raise_for_status()
    body = res.json()
    return body["weights_version"], [np.asarray(r["logprobs"], np.float32) for r in body["results"]]


def test_swap_under_load_is_atomic(swap_server, checkpoints):
    _, refs = checkpoints
    stop = threading.Event()
    seen: list[tuple[int, list[np.ndarray]]] = []

    def stream():
        while not stop.is_set():
            seen.append(score(swap_server.url))

    with cf.ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(stream) for _ in range(4)]
        time.sleep(1.0)
        res = httpx.post(swap_server.url + "/v1/weights", json={"path": "step-1"}, timeout=120)
        assert res.status_code == 200, res.text
        assert res.json()["weights_version"] == 1 and res.json()["load_seconds"] >= 0
        time.sleep(1.0)
        stop.set()
        for w in workers:
            w.result()
    versions = [v for v, _ in seen]
    assert 0 in versions and 1 in versions, versions
    assert versions.index(1) > 0
    for version, logprobs in seen:
        for got, want in zip(logprobs, refs[version]):
            np.testing.assert_allclose(got, want, atol=1e-5)
    assert httpx.get(swap_server.url + "/readyz").json()["weights_version"] == 1


@pytest.mark.parametrize(
    "path,status",
    [
        ("wrong-shape", 422),
        ("empty", 422),
        ("missing", 422),
        ("../outside", 403),
        ("escape", 403),
        ("/etc", 403),
    ],
)
def test_failed_load_keeps_serving(swap_server, checkpoints, path, status):
    _, refs = checkpoints
    before, _ = score(swap_server.url)
    res = httpx.post(swap_server.url + "/v1/weights", json={"path": path}, timeout=120)
    assert res.status_code == status, res.text
    assert res.json()["error"]["field"] == "path"
    version, logprobs = score(swap_server.url)
    assert version == before
    for got, want in zip(logprobs, refs[version]):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_version_must_increase(swap_server):
    current = httpx.get(swap_server.url + "/readyz").json()["weights_version"]
    res = httpx.post(
        swap_server.url + "/v1/weights", json={"path": "step-1", "version": current}, timeout=120
    )
    assert res.status_code == 409
    res = httpx.post(
        swap_server.url + "/v1/weights",
        json={"path": "step-1", "version": current + 10},
        timeout=120,
    )
    assert res.status_code == 200 and res.json()["weights_version"] == current + 10
