"""SGLang's ``POST /generate`` for scoring and generation (``GenerateReqInput`` of
``sglang/srt/managers/io_struct.py``), as slime and other SGLang clients send it
(docs/protocols.md).

Answer per prompt (a list for a batch)::

    {"text": str, "output_ids": [..],
     "meta_info": {"id", "finish_reason": {"type": "length", "length": N} | {"type": "stop",
                   "matched": id}, "prompt_tokens", "completion_tokens", "cached_tokens",
                   "e2e_latency",
                   "input_token_logprobs": [[logprob | None, token_id, text | None], ..],
                   "output_token_logprobs": [..], "input_top_logprobs": [[[lp, id, text], ..] |
                   None, ..], "output_top_logprobs": [..]}}

``input_token_logprobs`` covers prompt positions ``logprob_start_len .. len - 1`` (so ``len(...) +
logprob_start_len == prompt_tokens``; position 0 has no log-prob: ``None``); ``-1`` means the last
prompt position only, as SGLang's scheduler sets it. Fields and values this server would answer
differently from SGLang are a 400 naming them (``SAMPLING_UNSUPPORTED_UNLESS``,
``GENERATE_UNSUPPORTED_UNLESS``).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator
from pydantic_core import PydanticCustomError

from proto.openai_compat import OpenAIModel, check_supported

SAMPLING_UNSUPPORTED_UNLESS: dict[str, tuple[Any, ...]] = {
    "top_p": (None, 1, 1.0),
    "top_k": (None, -1, 0),
    "min_p": (None, 0, 0.0),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "repetition_penalty": (None, 1, 1.0),
    "min_new_tokens": (None, 0),
    "stop": (None, [], ""),
    "ignore_eos": (None, False),
    "spaces_between_special_tokens": (None, True),
    "no_stop_trim": (None, False),
    "n": (None, 1),
    "json_schema": (None,),
    "regex": (None,),
    "ebnf": (None,),
    "structural_tag": (None,),
    "custom_params": (None,),
    "logit_bias": (None, {}),
}

GENERATE_UNSUPPORTED_UNLESS: dict[str, tuple[Any, ...]] = {
    "stream": (None, False),
    "image_data": (None, []),
    "video_data": (None, []),
    "audio_data": (None, []),
    "input_embeds": (None,),
    "token_ids_logprob": (None,),
    "return_hidden_states": (None, False),
    "lora_path": (None,),
    "session_params": (None,),
    "custom_logit_processor": (None,),
    "return_output_logprob_only": (None, False),
}


class SGLangSamplingParams(OpenAIModel):
    max_new_tokens: int | None = Field(
        default=128, ge=0, description="0: score the prompt only (no token generated)."
    )
    temperature: float | None = Field(default=1.0, ge=0.0, description="0: greedy.")
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    sampling_seed: int | None = None

    @model_validator(mode="before")
    @classmethod
    def check_unsupported(cls, data: Any) -> Any:
        return check_supported(data, SAMPLING_UNSUPPORTED_UNLESS)


class GenerateRequest(OpenAIModel):
    """The subset of SGLang's ``GenerateReqInput`` answered exactly; per-item lists for the logprob
    options are not supported (one value for the whole batch)."""

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: SGLangSamplingParams | None = None
    rid: str | list[str] | None = None
    return_logprob: bool | None = False
    logprob_start_len: int | None = Field(default=-1, ge=-1)
    top_logprobs_num: int | None = Field(default=0, ge=0)
    return_text_in_logprobs: bool = False

    @model_validator(mode="before")
    @classmethod
    def check_unsupported(cls, data: Any) -> Any:
        data = check_supported(data, GENERATE_UNSUPPORTED_UNLESS)
        if isinstance(data, dict) and (data.get("text") is None) == (data.get("input_ids") is None):
            raise PydanticCustomError(
                "unsupported_value",
                "give exactly one of text and input_ids",
                {"field": "input_ids"},
            )
        return data
