"""The one shape of every error answer."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ErrorOut", "FieldError"]


class FieldError(BaseModel):
    """One field that failed validation."""

    loc: list[str | int] = Field(description="where: 'body', 'query' or 'path', then the field's path")
    msg: str
    type: str = Field(description="pydantic's error type, e.g. 'less_than_equal'")
    ctx: dict[str, str] | None = Field(None, description="the limit or pattern the value broke, as text")


class ErrorOut(BaseModel):
    """Every error answer: what went wrong and what to do about it; field errors for a 422."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"detail": "no job with id 'abc'"}, {
        "detail": "invalid input: body.epochs: Input should be less than or equal to 100",
        "errors": [{"loc": ["body", "epochs"], "msg": "Input should be less than or equal to 100",
                    "type": "less_than_equal", "ctx": {"le": "100"}}],
    }]})

    detail: str = Field(description="what went wrong, in words")
    errors: list[FieldError] | None = Field(None, description="422 only: each field that failed validation")
    problems: list[str] | None = Field(None, description="422 for a sweep: each thing to change in the request")
