"""The narrow interface every scoring backend implements.

Engines know nothing of HTTP: routes turn requests into ``ScoreItem``s (``to_engine_items``) and
engine outputs back into wire models. All per-token arrays follow docs/api.md's alignment rule:
``logprobs[j]`` scores ``target_ids[j]`` given ``context_ids + target_ids[:j]``; nothing is shifted
or padded, so every array has exactly ``len(target_ids)`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

EntropyKind = Literal["exact", "topk_lower_bound"]


@dataclass(frozen=True)
class ScoreItem:
    """One sequence to score, with its own options (so one engine batch may mix requests)."""

    context_ids: tuple[int, ...]
    target_ids: tuple[int, ...]
    top_k: int = 0
    entropy: bool = False
    temperature: float = 1.0
    # Vocabulary rank of each target token (1 = most likely; vLLM's ``rank``: how many ids have a
    # log-prob >= the token's own), for OpenAI-style prompt log-probs.
    ranks: bool = False
    # Caller-chosen ids to score at each target position: ``len(target_ids)`` rows of C distinct
    # ids (C >= 1, the same C for every row); () for none.
    candidate_ids: tuple[tuple[int, ...], ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.context_ids) + len(self.target_ids)


@dataclass
class ScoreOutput:
    logprobs: np.ndarray  # (L,) float32
    entropy: np.ndarray | None = None  # (L,) float32, nats
    topk_ids: np.ndarray | None = None  # (L, k) int32, most likely first
    topk_logprobs: np.ndarray | None = None  # (L, k) float32
    ranks: np.ndarray | None = None  # (L,) int32, 1 = most likely
    candidate_logprobs: np.ndarray | None = None  # (L, C) float32, log p of each candidate id
    candidate_tail: np.ndarray | None = None  # (L,) float32, log(1 - sum_c p_c)


@dataclass(frozen=True)
class GenerateItem:
    prompt_ids: tuple[int, ...]
    max_tokens: int
    temperature: float = 0.7
    seed: int | None = None
    stop_ids: tuple[int, ...] = ()


@dataclass
class GenerateOutput:
    token_ids: list[int]
    finish_reason: Literal["stop", "length"]
    # The eos or stop id that ended a "stop" generation when the engine leaves it out of
    # ``token_ids`` (hf); None when it is the last of ``token_ids`` (vLLM) or unknown.
    stop_id: int | None = None


@dataclass
class EngineInfo:
    model: str
    backend: Literal["hf", "vllm"]
    dtype: str
    device: str
    vocab_size: int
    max_model_len: int
    max_top_k: int
    entropy_kind: EntropyKind
    tokenizer_sha256: str
    extra: dict = field(default_factory=dict)


class WeightsError(Exception):
    """A checkpoint could not be loaded; the old weights keep serving."""


@runtime_checkable
class TeacherEngine(Protocol):
    """A loaded model that scores token sequences and generates text.

    Methods are async so the vLLM backend can keep many requests in flight; the hf backend runs
    its forward passes in a worker thread. Callers batch: pass every item you have at once.
    """

    info: EngineInfo
    tokenizer: object  # a transformers PreTrainedTokenizerBase

    async def score(self, items: list[ScoreItem]) -> list[ScoreOutput]: ...

    async def generate(self, items: list[GenerateItem]) -> list[GenerateOutput]: ...

    async def prepare_weights(self, path: str) -> object:
        """Load and check a checkpoint folder without touching the serving weights.

        Raise ``WeightsError`` with a human reason (missing files, wrong shapes) on failure.
        """
        ...

    async def swap_weights(self, prepared: object) -> None:
        """Install prepared weights. Called with no request in flight (the service drains)."""
        ...

    async def warmup(self) -> None: ...

    async def close(self) -> None: ...
