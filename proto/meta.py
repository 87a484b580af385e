"""Health, metadata, tokenization and weight loading."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from proto.base import Version, WireModel


class HealthResponse(WireModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(WireModel):
    status: Literal["ready"] = "ready"
    weights_version: int


class ModelInfo(WireModel):
    model: str = Field(description="Model name or path.")
    backend: Literal["hf", "vllm"]
    dtype: str
    device: str
    vocab_size: int
    max_model_len: int
    tokenizer_sha256: str
    weights_version: int
    max_top_k: int
    methods: list[str]


class ChatMessage(WireModel):
    role: str = Field(min_length=1)
    content: str


class TokenizeRequest(WireModel):
    """Exactly one of ``text`` (tokenized as is) or ``messages`` (through the chat template)."""

    text: str | None = None
    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def check_one_input(self) -> TokenizeRequest:
        if (self.text is None) == (self.messages is None):
            raise ValueError("give exactly one of `text` or `messages`")
        return self


class TokenizeResponse(WireModel):
    ids: list[int]


class WeightsRequest(WireModel):
    path: str = Field(min_length=1, description="Checkpoint folder, relative to TC_WEIGHTS_ROOT.")
    version: Version | None = Field(
        default=None,
        description="New weights_version (at most 2**63 - 1); default: current + 1. Must increase.",
    )


class WeightsResponse(WireModel):
    weights_version: int
    load_seconds: float
