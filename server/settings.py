"""Server settings, read from ``TC_*`` environment variables (pydantic-settings).

Every setting has a safe default: with no configuration the server loads the embedded tiny model
on the CPU, open (no API keys), with a warning in the log.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_MODEL_DIR = Path(__file__).parent / "default_model"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TC_", extra="ignore")

    # ---- Model and backend ----------------------------------------------------------------
    # Local Hugging Face model folder; empty means the embedded tiny arithmetic model.
    model: str = ""
    # Scoring backend: "hf" (transformers, CPU or GPU, exact entropy) or "vllm" (AsyncLLM).
    backend: Literal["hf", "vllm"] = "hf"
    # "auto" picks cuda when available, else cpu.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Compute dtype; "auto" is float32 on CPU and bfloat16 on CUDA.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # Longest context + target accepted; 0 means the model config's max_position_embeddings.
    max_model_len: int = Field(default=0, ge=0)
    # Most top-k ids a request may ask for.
    max_top_k: int = Field(default=20, ge=0, le=1000)

    # ---- Batching and backpressure --------------------------------------------------------
    # Token budget of one engine forward (context + target tokens, summed over sequences).
    max_batch_tokens: int = Field(default=16384, ge=1)
    # Requests waiting for the engine before new ones get 429 + Retry-After.
    max_queue: int = Field(default=256, ge=1)
    # How long the batcher waits for more requests to merge into a batch (milliseconds), only
    # while another HTTP request is in flight and not yet queued.
    batch_wait_ms: float = Field(default=2.0, ge=0.0)
    # Largest request body in bytes (413 above it).
    max_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Largest body of the text routes (/v1/tokenize, /v1/hints, /get_reward): they parse and
    # tokenize caller text, and a regex scan of a few MB holds the GIL for a good part of a
    # second, so this bound keeps /healthz under 1 s (docs/reliability.md).
    max_text_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # Seconds a connection has to deliver a complete request head (request line + headers),
    # from its opening and after each response; past it: 408 and closed (slow-header clients,
    # server/http_protocol.py).
    header_timeout: float = Field(default=10.0, gt=0.0)
    # Most JSON items in a body of the other routes: array values, an object counting 32 (413
    # above). Parsing JSON holds the event loop, so this keeps /healthz under 1 s; packed (base64)
    # arrays do not count (docs/reliability.md).
    max_json_items: int = Field(default=1_000_000, ge=1000)
    # Most tokens one scoring request may have scored (context + target, summed; 413 above).
    max_request_tokens: int = Field(default=1024 * 1024, ge=1)
    # Most tokens one request may generate (max_tokens summed over its hints/reflections; 413
    # above): 512 reflections of 256 tokens, an AMR-SD step of 64 groups x 8 rollouts.
    max_generate_tokens: int = Field(default=512 * 256, ge=1)

    # ---- Security -------------------------------------------------------------------------
    # Comma-separated API keys; empty runs the server open (a warning is logged at start).
    api_keys: str = ""
    # Comma-separated admin keys, required (in addition) for POST /v1/weights.
    admin_keys: str = ""
    # Folder that POST /v1/weights paths are resolved in; nothing outside it can be loaded.
    weights_root: str = "/tmp/tokencredit-weights"

    # ---- vLLM backend ---------------------------------------------------------------------
    # Fraction of GPU memory vLLM may take (GPU only).
    gpu_memory_utilization: float = Field(default=0.85, gt=0.0, le=1.0)
    # KV-cache reuse across a group's shared prefix (exactness is tested; see docs).
    enable_prefix_caching: bool = True

    # ---- Engine health --------------------------------------------------------------------
    # Deadline of one engine call (a batch forward, a generation, a weights swap), in seconds.
    # A call past it is a hung engine: the replica answers 503 and fails /healthz from then on.
    engine_call_timeout: float = Field(default=300.0, gt=0.0)
    # How often the engine's own health (e.g. vLLM's core process) is polled, in seconds.
    engine_watch_seconds: float = Field(default=1.0, gt=0.0)

    # ---- Operations -----------------------------------------------------------------------
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # Seconds SIGTERM waits for in-flight requests before the process exits.
    drain_seconds: float = Field(default=30.0, ge=0.0)
    # Serve the credit explorer page at GET /ui (docs/ui.md); off by default.
    ui: bool = False

    @model_validator(mode="after")
    def check_combinations(self) -> Settings:
        if self.backend == "vllm" and self.dtype == "float16" and self.device == "cpu":
            raise ValueError(
                "TC_DTYPE=float16 is not supported by vLLM on CPU; use float32 or bfloat16"
            )
        return self

    @property
    def model_path(self) -> str:
        return self.model or str(DEFAULT_MODEL_DIR)

    @property
    def api_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.api_keys.split(",") if k.strip())

    @property
    def admin_key_set(self) -> frozenset[str]:
        return frozenset(k.strip() for k in self.admin_keys.split(",") if k.strip())


@lru_cache
def get_settings() -> Settings:
    return Settings()
