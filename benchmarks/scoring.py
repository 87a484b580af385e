"""Scoring throughput: naive loop vs engine vs HTTP (packed / JSON), and payload costs.

    python benchmarks/scoring.py                 # embedded model + a random ~0.5B Qwen3 shape
    python benchmarks/scoring.py --skip-large    # embedded model only (about a minute)
    python benchmarks/scoring.py --device cuda   # the same comparison on a GPU (float32)

Prints tables (a benchmark, not a test). Rows:
  (a) naive: one sequence at a time, ``model(ids).logits.log_softmax(-1)`` over all positions
  (b) engine: ``HFEngine.score_sync`` (length-sorted batches, head only on target rows, chunked)
  (c) HTTP + packed arrays (``encoding: base64``), a real uvicorn server on a real port
  (d) HTTP + JSON lists
Workloads: independent sequences (every context different), and groups (8 rollouts scored
under each of 8 teacher contexts, as an RL step sends them), where the engine computes each
context once. Ratios are what to read: timings on a shared 2-core machine vary 2-4x between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_scoring import build_random_qwen3  # Qwen3-0.6B shape, random weights
from tables import print_table

from client.launcher import ServerProcess
from proto import decode_packed, encode_packed
from server.engines.base import ScoreItem
from server.engines.hf import HFEngine
from server.settings import DEFAULT_MODEL_DIR, Settings


def make_items(vocab: int, n: int, lo: int, hi: int, seed: int = 0) -> list[ScoreItem]:
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n):
        total = int(rng.integers(lo, hi + 1))
        ctx = int(rng.integers(1, total // 2 + 1))
        ids = rng.integers(0, vocab, total).tolist()
        items.append(ScoreItem(tuple(ids[:ctx]), tuple(ids[ctx:]), top_k=0))
    return items


def make_groups(vocab: int, groups: int, per_group: int, seed: int = 0) -> list[ScoreItem]:
    """``groups`` contexts of 32-256 tokens, each with ``per_group`` targets of 32-256 tokens."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(groups):
        context = tuple(rng.integers(0, vocab, int(rng.integers(32, 257))).tolist())
        for _ in range(per_group):
            target = tuple(rng.integers(0, vocab, int(rng.integers(32, 257))).tolist())
            items.append(ScoreItem(context, target, top_k=0))
    return items


@torch.inference_mode()
def naive(model, items: list[ScoreItem]) -> list[np.ndarray]:
    out = []
    for it in items:
        ids = torch.tensor([it.context_ids + it.target_ids], device=model.device)
        logp = model(ids).logits[0].float().log_softmax(-1)
        rows = logp[len(it.context_ids) - 1 : len(it.context_ids) - 1 + len(it.target_ids)]
        target = torch.tensor(it.target_ids, device=model.device)
        out.append(rows.gather(1, target[:, None])[:, 0].cpu().numpy())
    return out


def timed(fn, repeats: int = 1):
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def http_body(items, packed: bool, top_k=0, entropy=False) -> dict:
    def arr(x):
        return encode_packed(np.asarray(x, np.int32)) if packed else list(x)

    return {
        "sequences": [
            {"context_ids": arr(it.context_ids), "target_ids": arr(it.target_ids)} for it in items
        ],
        "top_k": top_k,
        "entropy": entropy,
        "encoding": "base64" if packed else "json",
    }


def decode_logprobs(payload: bytes, packed: bool) -> list[np.ndarray]:
    results = json.loads(payload)["results"]
    if packed:
        return [decode_packed(r["logprobs"]) for r in results]
    return [np.asarray(r["logprobs"], dtype=np.float32) for r in results]


def bench_model(
    label: str,
    model_path: str,
    items: list[ScoreItem],
    repeats: int,
    max_batch_tokens: int,
    device: str,
) -> list[tuple]:
    settings = Settings(
        model=model_path, device=device, dtype="float32", max_batch_tokens=max_batch_tokens
    )
    engine = HFEngine.load(settings)
    tokens = sum(len(it.target_ids) for it in items)
    engine.score_sync(items[:2])  # warm-up
    t_naive, ref = timed(lambda: naive(engine._model, items), repeats)
    t_engine, got = timed(lambda: engine.score_sync(items), repeats)
    err = max(float(np.abs(a - b.logprobs).max(initial=0)) for a, b in zip(ref, got))
    rows = [(label, "(a) naive loop", tokens / t_naive, 1.0, err)]
    rows.append((label, "(b) engine", tokens / t_engine, t_naive / t_engine, 0.0))
    with (
        ServerProcess(
            env={
                "TC_MODEL": model_path,
                "TC_DEVICE": device,
                "TC_DTYPE": "float32",
                "TC_MAX_BATCH_TOKENS": str(max_batch_tokens),
                "TC_LOG_LEVEL": "warning",
                "TC_MAX_BODY_BYTES": str(1 << 30),
            }
        ) as server,
        httpx.Client(timeout=600) as client,
    ):
        for packed, name in ((True, "(c) HTTP packed"), (False, "(d) HTTP JSON")):
            body = json.dumps(http_body(items, packed)).encode()
            client.post(
                server.url + "/v1/logprobs",
                content=body,
                headers={"content-type": "application/json"},
            )

            def call(body=body, packed=packed):
                res = client.post(
                    server.url + "/v1/logprobs",
                    content=body,
                    headers={"content-type": "application/json"},
                )
                return decode_logprobs(res.content, packed)

            t, out = timed(call, repeats)
            e = max(float(np.abs(a - b).max(initial=0)) for a, b in zip(ref, out))
            rows.append((label, name, tokens / t, t_naive / t, e))
    return rows


def payload_table(items: list[ScoreItem], server_url: str, k: int) -> list[tuple]:
    rows = []
    for top_k, entropy, label in ((0, False, "logprobs only"), (k, True, f"top_k={k} + entropy")):
        rows += payload_rows(items, server_url, top_k, entropy, label)
    return rows


def payload_rows(items, server_url: str, k: int, entropy: bool, label: str) -> list[tuple]:
    rows = []
    with httpx.Client(timeout=600) as client:
        sizes, decode = {}, {}
        for packed in (True, False):
            res = client.post(
                server_url + "/v1/logprobs", json=http_body(items, packed, top_k=k, entropy=entropy)
            )
            payload = res.content
            sizes[packed] = len(payload)

            def dec(payload=payload, packed=packed):
                results = json.loads(payload)["results"]
                for r in results:
                    for key in ("logprobs", "entropy", "topk_ids", "topk_logprobs"):
                        if r[key] is not None:
                            decode_packed(r[key]) if packed else np.asarray(r[key])

            decode[packed] = timed(dec, 5)[0]
        rows.append(
            (label, "response bytes", sizes[False], sizes[True], sizes[False] / sizes[True])
        )
        rows.append(
            (label, "decode seconds", decode[False], decode[True], decode[False] / decode[True])
        )
    return rows


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--skip-large", action="store_true", help="skip the random 0.5B model")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument(
        "--large-seqs", type=int, help="sequences for the 0.5B model (default 4 on cpu, 64 on cuda)"
    )
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    device = args.device
    large_seqs = args.large_seqs or (4 if device == "cpu" else 64)

    engine_vocab = HFEngine.load(Settings(model=args.model)).info.vocab_size
    small = make_items(engine_vocab, 64, 64, 512)
    rows = bench_model("embedded", args.model, small, args.repeats, 16384, device)
    groups = make_groups(engine_vocab, 8, 8)
    rows += bench_model("embedded, 8x8 groups", args.model, groups, args.repeats, 16384, device)

    with ServerProcess(
        env={"TC_MODEL": args.model, "TC_DEVICE": device, "TC_LOG_LEVEL": "warning"}
    ) as server:
        payload = payload_table(make_items(engine_vocab, 64, 64, 512, seed=1), server.url, k=20)

    large_rss = None
    if not args.skip_large:
        with tempfile.TemporaryDirectory() as tmp:
            build_random_qwen3(Path(tmp), "0.5b", torch.float32, max_len=4096)
            hi = 256 if device == "cpu" else 512
            large_items = make_items(151936, large_seqs, 64, hi, seed=2)
            budget = 2048 if device == "cpu" else 16384
            repeats = 1 if device == "cpu" else args.repeats
            rows += bench_model("random 0.5B", tmp, large_items, repeats, budget, device)
            with ServerProcess(
                env={
                    "TC_MODEL": tmp,
                    "TC_DEVICE": device,
                    "TC_LOG_LEVEL": "warning",
                    "TC_MAX_BATCH_TOKENS": "2048",
                }
            ) as server:
                before = peak_rss_mib(server.proc.pid)
                body = http_body(
                    make_items(151936, 8, 256, 512, seed=3), True, top_k=20, entropy=True
                )
                httpx.post(server.url + "/v1/logprobs", json=body, timeout=1200).raise_for_status()
                weights_mib = sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors")) / 2**20
                large_rss = (weights_mib, before, peak_rss_mib(server.proc.pid))

    print_table(
        f"Scoring throughput on {device} (target tokens/s; speed-up vs naive; max |Δ logprob|)",
        ("model", "path", "tokens/s", "x naive", "max abs diff"),
        rows,
    )
    print_table(
        "Response payload, 64 sequences of 64-512 tokens (JSON lists vs packed)",
        ("arrays", "measure", "JSON", "packed", "JSON/packed"),
        payload,
    )
    if large_rss:
        print_table(
            "Peak RSS of the server, random 0.5B, 8 x 256-512 tokens, top_k=20, entropy=true",
            ("weights MiB", "peak RSS after load MiB", "peak RSS after request MiB"),
            [large_rss],
        )


if __name__ == "__main__":
    main()
