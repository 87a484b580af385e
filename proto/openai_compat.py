"""vLLM's OpenAI-compatible subset, as vLLM 0.32 writes it: ``GET /v1/models``, ``GET /health``,
``POST /v1/completions`` (docs/protocols.md).

These models follow vLLM's wire format field for field (``vllm/entrypoints/openai/completion/
protocol.py``), not tokencredit's own conventions: errors are vLLM's
``{"error": {"message", "type", "param", "code"}}`` (``OpenAIErrorResponse``) and a bad request is
a 400 naming the parameter, as vLLM answers. Unlike vLLM, which ignores unknown fields, an unknown
field or a sampling option this server does not implement (``UNSUPPORTED_UNLESS``) is a 400 naming
it: a request is answered exactly as vLLM would answer it, or refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# vLLM's OpenAI fields that tokencredit accepts only at their no-op value: the values listed
# change nothing. Any other value is a 400 naming the field, never a silently different answer.
UNSUPPORTED_UNLESS: dict[str, tuple[Any, ...]] = {
    "stream": (False, None),
    "stream_options": (None,),
    "suffix": (None, ""),
    "best_of": (None, 1),
    "use_beam_search": (False, None),
    "top_p": (None, 1, 1.0),
    "top_k": (None, 0, -1),
    "min_p": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "length_penalty": (None, 1, 1.0),
    "logit_bias": (None, {}),
    "stop": (None, [], ""),
    "ignore_eos": (None, False),
    "min_tokens": (None, 0),
    "skip_special_tokens": (None, True),
    "spaces_between_special_tokens": (None, True),
    "include_stop_str_in_output": (None, False),
    "add_special_tokens": (None, True),
    "truncate_prompt_tokens": (None,),
    "allowed_token_ids": (None,),
    "bad_words": (None, []),
    "logprob_token_ids": (None, []),
    "prompt_embeds": (None,),
    "response_format": (None,),
    "structured_outputs": (None,),
    "priority": (None, 0),
    "request_id": (None,),
    "cache_salt": (None,),
    "return_tokens_as_token_ids": (None, False),
    "kv_transfer_params": (None,),
    "ec_transfer_params": (None,),
    "vllm_xargs": (None,),
    "watermarking": (None, False),
}


def _is_one_of(value: Any, allowed: tuple[Any, ...]) -> bool:
    """Equal to an allowed value, with booleans and numbers kept apart (``True`` is not 1)."""
    return any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed)


def check_supported(data: Any, unsupported: dict[str, tuple[Any, ...]]) -> Any:
    """Drop the no-op fields of ``unsupported``; any other value of them is an error naming the
    field (``ctx["field"]``, read by the route as the error's ``param``)."""
    if not isinstance(data, dict):
        return data
    for name, allowed in unsupported.items():
        if name in data:
            if not _is_one_of(data[name], allowed):
                raise PydanticCustomError(
                    "unsupported_value",
                    "`{field}`={value} is not supported by tokencredit; supported: {allowed} "
                    "(docs/protocols.md)",
                    {"field": name, "value": repr(data[name]), "allowed": repr(allowed)},
                )
            data = {k: v for k, v in data.items() if k != name}
    return data


class OpenAIModel(BaseModel):
    """Base of the OpenAI-compatible models. Unknown fields are refused (400 naming them)."""

    model_config = ConfigDict(extra="forbid")


# ---- errors --------------------------------------------------------------------------------------


class OpenAIErrorInfo(OpenAIModel):
    message: str
    type: str = Field(description="`BadRequestError`, `NotFoundError`, `AuthenticationError`, ...")
    param: str | None = Field(default=None, description="The offending request parameter.")
    code: int = Field(description="The HTTP status, repeated.")


class OpenAIErrorResponse(OpenAIModel):
    error: OpenAIErrorInfo


# ---- GET /v1/models ------------------------------------------------------------------------------


class ModelPermission(OpenAIModel):
    id: str
    object: Literal["model_permission"] = "model_permission"
    created: int
    allow_create_engine: bool = False
    allow_sampling: bool = True
    allow_logprobs: bool = True
    allow_search_indices: bool = False
    allow_view: bool = True
    allow_fine_tuning: bool = False
    organization: str = "*"
    group: str | None = None
    is_blocking: bool = False


class ModelCard(OpenAIModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "vllm"
    root: str | None = None
    parent: str | None = None
    max_model_len: int | None = None
    permission: list[ModelPermission] = Field(default_factory=list)


class ModelList(OpenAIModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- POST /v1/completions ------------------------------------------------------------------------

Prompt = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(OpenAIModel):
    """The subset of vLLM's ``CompletionRequest`` tokencredit answers exactly, in OpenAI's order.

    ``prompt_logprobs`` and ``logprobs`` are vLLM's raw log-probs (``logprobs_mode="raw_logprobs"``,
    vLLM's default): ``log_softmax(logits)`` before temperature, so ``temperature`` changes the
    sampled tokens only, as on vLLM.
    """

    model: str | None = None
    prompt: Prompt = Field(description="Text, texts, token ids, or a list of token-id lists.")
    echo: bool | None = False
    logprobs: int | None = Field(
        default=None, ge=0, description="Top log-probs per generated token (0: the token's own)."
    )
    max_tokens: int | None = Field(default=16, description="Tokens to generate, at least 1.")
    n: int = Field(default=1, ge=1, description="Completions per prompt.")
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    temperature: float | None = Field(default=None, description="None: 1.0; 0: greedy.")
    user: str | None = None
    stop_token_ids: list[int] | None = Field(default_factory=list)
    prompt_logprobs: int | None = Field(
        default=None,
        description="Top log-probs per prompt position, plus the prompt token itself; the first "
        "position is null.",
    )
    return_token_ids: bool | None = Field(
        default=None, description="Add prompt_token_ids and token_ids to each choice."
    )

    @model_validator(mode="before")
    @classmethod
    def check_unsupported(cls, data: Any) -> Any:
        return check_supported(data, UNSUPPORTED_UNLESS)


class CompletionLogProbs(OpenAIModel):
    text_offset: list[int] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    tokens: list[str] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)


class Logprob(OpenAIModel):
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


class CompletionResponseChoice(OpenAIModel):
    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    prompt_logprobs: list[dict[str, Logprob] | None] | None = None
    prompt_token_ids: list[int] | None = None
    routed_experts: str | None = None


class UsageInfo(OpenAIModel):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


class CompletionResponse(OpenAIModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionResponseChoice]
    service_tier: str | None = None
    system_fingerprint: str | None = None
    usage: UsageInfo
    kv_transfer_params: dict[str, Any] | None = None
    ec_transfer_params: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
