"""Request and response schemas of the v1 API; requests built with the limits of the running service.

Unknown request fields are rejected; every query is cleaned (control characters become spaces,
unpaired surrogates become U+FFFD) and must keep at least one visible character.

The response models document ``/openapi.json`` only: the routes build their JSON by hand
(``responses.json_response``) and never validate it on the request path; the tests validate a
real server's answers against these models.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, RootModel, model_validator

from shelver.decisions import DECISIONS

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


# ---- responses ------------------------------------------------------------------------------
Confidence = Annotated[float, Field(ge=0.0, le=1.0)]


class Prediction(BaseModel):
    """The answer for one query, as ``shelver predict`` prints it (``decisions.Prediction.to_dict``)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(description="The query as the model saw it (cleaned).")
    path: list[str] = Field(
        description="One entry per taxonomy level, '' where the level was withheld (all '' when abstaining); "
        "for a multi-label model, the most confident answered path."
    )
    confidence: list[Confidence] = Field(
        description="The calibrated confidence of the best candidate at each level (the last one is the "
        "whole path's), rounded to 6 decimals; given even for withheld levels."
    )
    decision: Literal[DECISIONS] = Field(  # type: ignore[valid-type]
        description="'full': the whole path; 'category': the subcategory withheld; "
        "'abstain': nothing answered."
    )
    reason: str = Field(description="Why: each confidence against its threshold.")
    paths: list[list[str]] = Field(
        description="Every answered path, most confident first: one for a single-label model, any number for "
        "a multi-label one (['Category', ''] where only categories pass); empty when abstaining."
    )
    candidate: list[str] = Field(description="The best full path, answered or not.")


class Predictions(BaseModel):
    """The answers to ``{"queries": [...]}``."""

    model_config = ConfigDict(extra="forbid")

    predictions: list[Prediction] = Field(description="One answer per query, in the order sent.")


def _one_of(schema: dict[str, Any]) -> None:
    schema["oneOf"] = schema.pop("anyOf")  # exclusive: each form forbids the other's keys


class ClassifyAnswer(RootModel[Prediction | Predictions]):
    """``{"query": ...}`` gets one prediction; ``{"queries": [...]}`` gets ``{"predictions": [...]}``."""

    model_config = ConfigDict(json_schema_extra=_one_of)


class TaxonomyInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    hash: str = Field(description="SHA-256 of the canonical tree: equal trees hash equal.")
    levels: list[str] = Field(description="The levels' names, top first.")
    tree: dict[str, Any] = Field(description="Each category with its subcategories.")


class EncoderInfo(BaseModel):
    model_config = ConfigDict(extra="allow")

    trained_with: str | None = Field(description="The encoder the heads were trained on.")
    serving: str = Field(description="The encoder answering queries ('onnx', 'hashing', 'static', ...).")


class ThresholdsFittedOn(BaseModel):
    model_config = ConfigDict(extra="allow")

    summary: str = Field(description="What the thresholds promise, in one line; the fit's details follow.")


class ModelInfo(BaseModel):
    """The served model (``GET /v1/model``); nested objects may grow keys."""

    model_config = ConfigDict(extra="allow")

    version: str = Field(
        description="The model's version; every classify answer carries it in x-shelver-model."
    )
    model_dir: str = Field(description="The model directory's name (never its server path).")
    created: str | None = Field(description="When the model was trained (ISO 8601).")
    shelver_version: str | None = Field(description="The shelver that trained it.")
    taxonomy: TaxonomyInfo
    training: dict[str, Any] = Field(description="The training data: its row count and fingerprint.")
    head: str | None = Field(description="The classifier head.")
    encoder: EncoderInfo
    export: dict[str, Any] | None = Field(description="The ONNX export and its agreement check, if exported.")
    thresholds: dict[str, Any] | None = Field(
        description="The decision thresholds, where the model keeps any."
    )
    thresholds_fitted_on: ThresholdsFittedOn
    batch_invariant: bool = Field(
        description="Whether batching leaves a query's answer unchanged (then requests are micro-batched)."
    )


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ok"]


class Ready(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: Literal["ready"]
    version: str = Field(description="The served model's version.")


class Reloaded(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reloaded: Literal[True]
    version: str = Field(description="The model now serving.")
    previous: str | None = Field(description="The model it replaced.")


class ErrorBody(BaseModel):
    """Every refusal: 4xx for the client's mistakes, 503 when the service cannot answer in time."""

    model_config = ConfigDict(extra="forbid")

    detail: str = Field(description="What went wrong and what to do about it.")


class ErrorItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = Field(description="Pydantic's error type, e.g. 'string_too_long'.")
    loc: list[str | int] = Field(description="Where in the body, e.g. ['queries', 1].")
    msg: str


class InvalidBody(ErrorBody):
    """A body that is not valid JSON or does not fit the request schema (422)."""

    errors: list[ErrorItem] = Field(description="Every problem; ``detail`` names the first.")


Documented = dict[int | str, dict[str, Any]]
# what the guard answers for any POST, before a route sees the body (service/guard.py)
BODY_ERRORS: dict[int, tuple[type[BaseModel], str]] = {
    408: (ErrorBody, "The body did not arrive within SHELVER_BODY_TIMEOUT seconds."),
    413: (ErrorBody, "The body is larger than SHELVER_MAX_BODY_BYTES."),
}


def documented(ok: Any, errors: dict[int, tuple[Any, str]]) -> Documented:
    """FastAPI's ``responses=`` for a route: the model of its 200 answer, and of each error status
    with what it means. Documentation only: the routes answer with hand-built JSON."""
    out: Documented = {200: {"model": ok}}
    for status, (model, description) in errors.items():
        out[status] = {"model": model, "description": description}
    return out
