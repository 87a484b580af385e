"""The one base class of every wire model, and the error body.

Unknown fields are rejected (``extra="forbid"``), as docs/api.md requires: a typo in a field name is a
422 naming that field, never a silently ignored option. Text must be valid Unicode: a JSON string
with a lone surrogate escape is a 422 naming the field, not a tokenizer crash.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


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


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

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
