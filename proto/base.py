"""The one base class of every wire model, and the error body.

Unknown fields are rejected (``extra="forbid"``), as docs/api.md requires: a typo in a field name is a
422 naming that field, never a silently ignored option. Text must be valid Unicode: a JSON string
with a lone surrogate escape is a 422 naming the field, not a tokenizer crash.

Types are strict (``strict=True``): ``true`` is no token id, ``"5"`` no integer, ``"yes"`` no
boolean, ``1.0`` no integer (a JSON integer is still a valid float). Floats are finite
(``allow_inf_nan=False``): ``NaN``, ``Infinity`` and ``1e309`` (which JSON parsers read as
infinity) are a 422 naming the field, so no NaN reaches the math or comes back in a response.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

INT64_MAX = 2**63 - 1
# A weights version: stored, compared and exported as a signed 64-bit integer (Prometheus, the
# trainer's step counter), so a larger one could never be passed again once loaded.
Version = Annotated[int, Field(ge=0, le=INT64_MAX)]


def _check_text(value):
    """Reject lone surrogates (JSON ``"\\ud800"``): they cannot be encoded or tokenized."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"text is not valid Unicode (lone surrogate at position {exc.start})"
                ) from None
    elif isinstance(value, list):
        for item in value:
            if isinstance(item, str):
                _check_text(item)
    return value


MAX_FREE_FORM_DEPTH = 64


def find_non_finite(value: Any, path: str = "", depth: int = 0) -> tuple[str, str] | None:
    """``(path, problem)`` of the first NaN/Infinity (or over-deep nesting) inside a JSON-like
    object, else None. For free-form fields (``state``, ``params``) that no float type guards."""
    if depth > MAX_FREE_FORM_DEPTH:
        return path, f"is nested more than {MAX_FREE_FORM_DEPTH} levels deep"
    if isinstance(value, float) and not math.isfinite(value):
        return path, f"is {value!r}: numbers must be finite (no NaN or Infinity)"
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        sub = f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else str(key)
        found = find_non_finite(item, sub, depth + 1)
        if found:
            return found
    return None


class WireModel(BaseModel):
    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, strict=True, allow_inf_nan=False
    )

    @field_validator("*")
    @classmethod
    def _valid_unicode(cls, value):
        return _check_text(value)


class ErrorInfo(WireModel):
    type: str = Field(description="snake_case error kind, e.g. `validation_error`, `queue_full`.")
    message: str = Field(description="A human sentence saying what is wrong and how to fix it.")
    field: str | None = Field(
        default=None,
        description="JSON path of the offending request field, e.g. `sequences[0].context_ids`.",
    )


class ErrorResponse(WireModel):
    error: ErrorInfo
