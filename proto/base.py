"""The one base class of every wire model, and the error body.

Unknown fields are rejected (``extra="forbid"``), as API.md requires: a typo in a field name is a
422 naming that field, never a silently ignored option.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class WireModel(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ErrorInfo(WireModel):
    type: str = Field(description="snake_case error kind, e.g. `validation_error`, `queue_full`.")
    message: str = Field(description="A human sentence saying what is wrong and how to fix it.")
    field: str | None = Field(
        default=None,
        description="JSON path of the offending request field, e.g. `sequences[0].context_ids`.",
    )


class ErrorResponse(WireModel):
    error: ErrorInfo
