"""Request schemas of the v1 API, built with the limits of the running service.

Unknown fields are rejected; every query is cleaned (control characters become spaces, unpaired
surrogates become U+FFFD) and must keep at least one visible character.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_query(text: str) -> str:
    """What the model sees: no control characters or unpaired surrogates, no outer whitespace."""
    text = _SURROGATE.sub("\ufffd", _CONTROL.sub(" ", text)).strip()
    if not text:
        raise ValueError("the query is empty or whitespace only; send at least one visible character")
    return text


def classify_request_model(max_query_chars: int, max_batch: int) -> type[BaseModel]:
    """``{"query": "..."}`` or ``{"queries": ["...", ...]}``, within the service's limits."""
    Query = Annotated[str, Field(min_length=1, max_length=max_query_chars), AfterValidator(clean_query)]

    class ClassifyRequest(BaseModel):
        """One query, or a batch of queries; exactly one of the two."""

        model_config = ConfigDict(extra="forbid", strict=True)

        query: Query | None = Field(None, description="One query to classify.")
        queries: list[Query] | None = Field(
            None, min_length=1, max_length=max_batch, description="Several queries, answered in order."
        )

        @model_validator(mode="after")
        def _exactly_one(self) -> ClassifyRequest:
            if (self.query is None) == (self.queries is None):
                raise ValueError("send either 'query' (one text) or 'queries' (a list), not both or neither")
            return self

        def texts(self) -> list[str]:
            return [self.query] if self.query is not None else list(self.queries or [])

    return ClassifyRequest


class ReloadRequest(BaseModel):
    """Which model directory to swap in; by default the one being served, read again."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(
        None, min_length=1, max_length=4096, description="A model directory under the models root."
    )
    allow_taxonomy_change: bool = Field(
        False, description="Swap in a model trained on another taxonomy (clients get other categories)."
    )
