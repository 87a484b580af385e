"""The plugin's settings: environment variables, set by the launcher on every Ray worker.

=================================  =============================================================
variable                           meaning
=================================  =============================================================
``TOKENCREDIT_URLS``               teacher base URLs, comma-separated (replicas; the client fails
                                   over between them). ``TOKENCREDIT_URL`` is read when unset.
``TOKENCREDIT_METHOD``             credit method of /v1/advantages (``antisd``, ``hsd``, ...).
``TOKENCREDIT_PARAMS``             JSON object of method parameters (``{"lam": 0.5}``), default ``{}``.
``TOKENCREDIT_SEED``               base seed; step ``s`` sends ``seed + s`` (peer draws differ by
                                   step and are reproducible). Default 0.
``TOKENCREDIT_API_KEY``            bearer key of the pool (``TC_API_KEYS`` on the servers).
``TOKENCREDIT_ADMIN_KEY``          admin key, only for weight syncing (``TC_ADMIN_KEYS``).
``TOKENCREDIT_TIMEOUT``            base read timeout of one call in seconds, default 600; calls
                                   that score the teacher add ``tokens / TOKENS_PER_SECOND``.
``TOKENCREDIT_TOKENS_PER_SECOND``  slowest teacher throughput of one replica the timeouts allow
                                   for, default 2000 tokens/s.
``TOKENCREDIT_RETRIES``            retries of the client's transport, default 4 (backoff, 429,
                                   502-504, failover).
``TOKENCREDIT_STEP_RETRY``         seconds a step's call is tried again after the transport gave
                                   up (a replica restarting), each wait logged; default 1800,
                                   0 = never (`client.retry_within`).
``TOKENCREDIT_STUDENT``            ``trainer`` (default): student log-probs are the actor's;
                                   ``server``: the pool scores the student with the teacher's
                                   weights, so both sides come from one set of weights.
``TOKENCREDIT_WEIGHTS_PREFIX``     set to sync the teacher's weights (`weights`): after OpenRLHF
                                   saves an HF checkpoint (``--ckpt.save_hf``), ``POST
                                   /v1/weights`` with ``<prefix>/global_step<N>_hf`` (relative to
                                   the pool's ``TC_WEIGHTS_ROOT``). Unset: no syncing.
``TOKENCREDIT_BASE_WEIGHTS``       with syncing: the base model's folder inside the pool's
                                   ``TC_WEIGHTS_ROOT``, loaded when a run starts at step 0.
``TOKENCREDIT_PRUNE_CHECKPOINTS``  with syncing: ``1`` (default) deletes ``global_step<M>_hf``
                                   folders once every replica serves a later step; ``0`` keeps them.
``TOKENCREDIT_WEIGHTS_SYNC``       ``disk`` (default: the HF checkpoints above, when
                                   ``TOKENCREDIT_WEIGHTS_PREFIX`` is set) or ``push``: the actor's
                                   rank 0 broadcasts its weights to every replica over
                                   ``torch.distributed`` after every step (`push`), no folders.
``TOKENCREDIT_PUSH_BACKEND``       with push: ``auto`` (default: ``shm`` for replicas on rank 0's
                                  host, else ``gloo``), ``shm``, ``gloo`` or ``nccl`` (GPU replicas).
``TOKENCREDIT_PUSH_ADDRESS``       with push: the actor rank 0's address the replicas connect back
                                   to (default: its address on the route to the first replica).
=================================  =============================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from client import PUSH_BACKENDS
from proto.advantages import METHODS

ENV_URLS = "TOKENCREDIT_URLS"
ENV_URL = "TOKENCREDIT_URL"
ENV_METHOD = "TOKENCREDIT_METHOD"
ENV_PARAMS = "TOKENCREDIT_PARAMS"
ENV_SEED = "TOKENCREDIT_SEED"
ENV_API_KEY = "TOKENCREDIT_API_KEY"
ENV_ADMIN_KEY = "TOKENCREDIT_ADMIN_KEY"
ENV_TIMEOUT = "TOKENCREDIT_TIMEOUT"
ENV_RETRIES = "TOKENCREDIT_RETRIES"
ENV_WEIGHTS_PREFIX = "TOKENCREDIT_WEIGHTS_PREFIX"
ENV_BASE_WEIGHTS = "TOKENCREDIT_BASE_WEIGHTS"
ENV_PRUNE = "TOKENCREDIT_PRUNE_CHECKPOINTS"
ENV_STEP_RETRY = "TOKENCREDIT_STEP_RETRY"
ENV_STUDENT = "TOKENCREDIT_STUDENT"
ENV_TOKENS_PER_SECOND = "TOKENCREDIT_TOKENS_PER_SECOND"
ENV_WEIGHTS_SYNC = "TOKENCREDIT_WEIGHTS_SYNC"
ENV_PUSH_BACKEND = "TOKENCREDIT_PUSH_BACKEND"
ENV_PUSH_ADDRESS = "TOKENCREDIT_PUSH_ADDRESS"
STUDENT_SOURCES = ("trainer", "server")
WEIGHTS_SYNC = ("disk", "push")


class ConfigError(ValueError):
    """A TOKENCREDIT_* variable is missing or malformed; the message names it."""


@dataclass(frozen=True)
class PluginConfig:
    # Teacher pool: base URLs, tried in order with failover by the client's transport.
    urls: tuple[str, ...]
    # Credit method and its parameter overrides (docs/algorithms.md).
    method: str
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    # Keys: bearer key for scoring; admin key for POST /v1/weights (weight syncing only).
    api_key: str | None = None
    admin_key: str | None = None
    # Client transport: base read timeout of one call (s), and its retry count.
    timeout: float = 600.0
    retries: int = 4
    # Timeouts grow with the teacher's work: + tokens / tokens_per_second (one replica).
    tokens_per_second: float = 2000.0
    # Step level: seconds a step's call is tried again after the transport gave up (0 = never).
    step_retry: float = 1800.0
    # Where student log-probs come from: the actor ("trainer") or the pool ("server").
    student: str = "trainer"
    # Weight syncing: checkpoint folder prefix inside the pool's TC_WEIGHTS_ROOT; None = off.
    weights_prefix: str | None = None
    # With syncing: the base model's folder inside TC_WEIGHTS_ROOT (loaded at step 0).
    base_weights: str | None = None
    # With syncing: delete HF checkpoint folders older than the one every replica serves.
    prune_checkpoints: bool = True
    # Transport: "disk" (HF checkpoints, when weights_prefix is set) or "push" (torch.distributed
    # from the actor's rank 0 after every step; no prefix, no folders).
    weights_sync: str = "disk"
    # With push: the process-group backend, and the address the replicas connect back to.
    push_backend: str = "auto"
    push_address: str | None = None

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigError(f"no teacher URL: set {ENV_URLS} (comma-separated) or --teacher-url")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"teacher URL {url!r} must start with http:// or https://")
        if self.method not in METHODS:
            raise ConfigError(
                f"{ENV_METHOD}={self.method!r} is not a method; choose one of {', '.join(METHODS)}"
            )
        if not isinstance(self.params, dict):
            raise ConfigError(f"{ENV_PARAMS} must be a JSON object, got {self.params!r}")
        if self.timeout <= 0:
            raise ConfigError(f"{ENV_TIMEOUT} must be > 0 seconds, got {self.timeout}")
        if self.retries < 0:
            raise ConfigError(f"{ENV_RETRIES} must be >= 0, got {self.retries}")
        if self.tokens_per_second <= 0:
            raise ConfigError(f"{ENV_TOKENS_PER_SECOND} must be > 0, got {self.tokens_per_second}")
        if self.step_retry < 0:
            raise ConfigError(f"{ENV_STEP_RETRY} must be >= 0 seconds, got {self.step_retry}")
        if self.student not in STUDENT_SOURCES:
            raise ConfigError(f"{ENV_STUDENT} must be trainer or server, got {self.student!r}")
        if self.weights_sync not in WEIGHTS_SYNC:
            raise ConfigError(f"{ENV_WEIGHTS_SYNC} must be disk or push, got {self.weights_sync!r}")
        if self.push_backend not in PUSH_BACKENDS:
            raise ConfigError(
                f"{ENV_PUSH_BACKEND} must be one of {', '.join(PUSH_BACKENDS)}, got "
                f"{self.push_backend!r}"
            )
        if self.weights_sync == "push" and self.weights_prefix is not None:
            raise ConfigError(
                f"{ENV_WEIGHTS_SYNC}=push sends the weights over torch.distributed, and "
                f"{ENV_WEIGHTS_PREFIX} (--sync-weights) loads HF checkpoints: choose one transport"
            )

    @property
    def syncing(self) -> bool:
        """Whether the run puts its own weights on the pool (either transport)."""
        return self.weights_sync == "push" or self.weights_prefix is not None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PluginConfig:
        env = os.environ if environ is None else environ
        urls = env.get(ENV_URLS) or env.get(ENV_URL) or ""
        method = env.get(ENV_METHOD)
        if not method:
            raise ConfigError(f"{ENV_METHOD} is not set: the credit method, e.g. antisd")
        try:
            params = json.loads(env.get(ENV_PARAMS) or "{}")
        except ValueError as exc:
            raise ConfigError(f"{ENV_PARAMS} is not valid JSON: {exc}") from None
        return cls(
            urls=tuple(u.strip().rstrip("/") for u in urls.split(",") if u.strip()),
            method=method,
            params=params,
            seed=_number(env, ENV_SEED, int, 0),
            api_key=env.get(ENV_API_KEY) or None,
            admin_key=env.get(ENV_ADMIN_KEY) or None,
            timeout=_number(env, ENV_TIMEOUT, float, 600.0),
            retries=_number(env, ENV_RETRIES, int, 4),
            tokens_per_second=_number(env, ENV_TOKENS_PER_SECOND, float, 2000.0),
            step_retry=_number(env, ENV_STEP_RETRY, float, 1800.0),
            student=env.get(ENV_STUDENT) or "trainer",
            weights_prefix=env.get(ENV_WEIGHTS_PREFIX),
            base_weights=env.get(ENV_BASE_WEIGHTS) or None,
            prune_checkpoints=(env.get(ENV_PRUNE) or "1") not in ("0", "false", "no"),
            weights_sync=env.get(ENV_WEIGHTS_SYNC) or "disk",
            push_backend=env.get(ENV_PUSH_BACKEND) or "auto",
            push_address=env.get(ENV_PUSH_ADDRESS) or None,
        )

    def to_env(self) -> dict[str, str]:
        """The variables that reproduce this config in another process (keys included)."""
        env = {
            ENV_URLS: ",".join(self.urls),
            ENV_METHOD: self.method,
            ENV_PARAMS: json.dumps(self.params, separators=(",", ":")),
            ENV_SEED: str(self.seed),
            ENV_TIMEOUT: str(self.timeout),
            ENV_RETRIES: str(self.retries),
            ENV_TOKENS_PER_SECOND: str(self.tokens_per_second),
            ENV_STEP_RETRY: str(self.step_retry),
            ENV_STUDENT: self.student,
            ENV_PRUNE: "1" if self.prune_checkpoints else "0",
            ENV_WEIGHTS_SYNC: self.weights_sync,
            ENV_PUSH_BACKEND: self.push_backend,
        }
        if self.api_key:
            env[ENV_API_KEY] = self.api_key
        if self.admin_key:
            env[ENV_ADMIN_KEY] = self.admin_key
        if self.weights_prefix is not None:
            env[ENV_WEIGHTS_PREFIX] = self.weights_prefix
        if self.base_weights:
            env[ENV_BASE_WEIGHTS] = self.base_weights
        if self.push_address:
            env[ENV_PUSH_ADDRESS] = self.push_address
        return env


def _number(env: Mapping[str, str], name: str, kind: type, default: Any) -> Any:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
