"""The response models: a real server's answers fit them, and ``/openapi.json`` documents them."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO, ServerProcess, make_rows
from pydantic import BaseModel, ValidationError
from test_multilabel import multi_rows

from shelver import HierarchicalClassifier
from shelver.decisions import Prediction as DecidedPrediction
from shelver.service.schemas import (
    ClassifyAnswer,
    ErrorBody,
    Health,
    InvalidBody,
    ModelInfo,
    Prediction,
    Predictions,
    Ready,
)
from shelver.taxonomy import Taxonomy

FULL, CATEGORY, ABSTAIN = "linen shirt", "tote bag", "qqq xyz"  # at thresholds (0.5, 0.9), hashing


def _save(taxonomy: Taxonomy, out: Path, multi_label: bool, thresholds: tuple[float, float]) -> Path:
    rows = make_rows(14, 0)
    rows = multi_rows(rows, 0) if multi_label else rows
    model = HierarchicalClassifier(
        taxonomy=taxonomy,
        encoder="hashing",
        multi_label=multi_label,
        thresholds=thresholds,
        head="per_group",
        router="categories",
        lexical=False,
    )
    model.fit(rows["text"].tolist(), rows[["category", "subcategory"]].to_numpy())
    return model.save(out)


@pytest.fixture(scope="module")
def single(tmp_path_factory, taxonomy) -> Iterator[httpx.Client]:
    """Hand thresholds high enough that some queries get the category alone, or nothing."""
    yield from _serve(_save(taxonomy, tmp_path_factory.mktemp("openapi") / "single", False, (0.5, 0.9)))


@pytest.fixture(scope="module")
def multi(tmp_path_factory, taxonomy) -> Iterator[httpx.Client]:
    yield from _serve(_save(taxonomy, tmp_path_factory.mktemp("openapi") / "multi", True, (0.3, 0.3)))


def _serve(model: Path) -> Iterator[httpx.Client]:
    server = ServerProcess(model).wait_ready()
    try:
        with httpx.Client(base_url=server.url, timeout=10.0) as http:
            yield http
    finally:
        server.stop()


def _classify(http: httpx.Client, body: object) -> ClassifyAnswer:
    response = http.post("/v1/classify", json=body)
    assert response.status_code == 200, response.text
    return ClassifyAnswer.model_validate(response.json())


# ---- answers fit the models -----------------------------------------------------------------
def test_the_prediction_model_names_every_key_of_a_prediction():
    assert list(Prediction.model_fields) == [f.name for f in dataclasses.fields(DecidedPrediction)]


def test_one_query_and_a_batch_fit_the_documented_answer(single):
    one = _classify(single, {"query": FULL}).root
    assert isinstance(one, Prediction) and one.decision == "full" and one.paths == [one.path]
    many = _classify(single, {"queries": [FULL, CATEGORY, ABSTAIN]}).root
    assert isinstance(many, Predictions)
    assert [p.decision for p in many.predictions] == ["full", "category", "abstain"]
    abstained = many.predictions[2]
    assert abstained.path == ["", ""] and abstained.paths == [] and len(abstained.candidate) == 2


def test_multi_label_answers_fit_the_documented_answer(multi):
    answers = _classify(multi, {"queries": ["navy trail runner", "green gift set", "red boots"]}).root
    assert isinstance(answers, Predictions)
    assert max(len(p.paths) for p in answers.predictions) >= 2  # several paths for one query
    assert all(p.path == p.paths[0] for p in answers.predictions if p.paths)


def test_model_info_probes_and_refusals_fit_their_models(single, multi):
    for http in (single, multi):
        info = ModelInfo.model_validate(http.get("/v1/model").json())
        assert info.version == Ready.model_validate(http.get("/readyz").json()).version
    Health.model_validate(single.get("/healthz").json())
    for body in ({"query": ""}, {"queries": ["ok"], "top_k": 3}, {}):
        response = single.post("/v1/classify", json=body)
        assert response.status_code == 422
        InvalidBody.model_validate(response.json())
    invalid_json = single.post("/v1/classify", content=b"{", headers={"content-type": "application/json"})
    InvalidBody.model_validate(invalid_json.json())
    too_large = single.post("/v1/classify", content=b"x" * 1_000_001)
    assert too_large.status_code == 413
    ErrorBody.model_validate(too_large.json())


@pytest.mark.parametrize(
    ("model", "answer"),
    [
        (Prediction, {"text": "a", "path": ["A", "B"], "confidence": [0.9, 0.8], "decision": "full",
                      "reason": "", "paths": [["A", "B"]], "candidate": ["A", "B"], "score": 1.0}),
        (Prediction, {"text": "a", "path": ["A", "B"], "confidence": [0.9], "decision": "maybe",
                      "reason": "", "paths": [], "candidate": ["A", "B"]}),
        (Predictions, {"predictions": [], "model": "v1"}),
        (InvalidBody, {"detail": "query: too long"}),
        (Ready, {"status": "ready"}),
    ],
)  # fmt: skip
def test_the_models_refuse_an_undocumented_or_missing_key(model: type[BaseModel], answer: dict):
    with pytest.raises(ValidationError):
        model.model_validate(answer)


# ---- /openapi.json documents them ----------------------------------------------------------
def test_openapi_documents_what_classify_answers(single):
    spec = single.get("/openapi.json").json()
    responses = spec["paths"]["/v1/classify"]["post"]["responses"]
    schemas = spec["components"]["schemas"]

    def schema(status: str) -> dict:
        return _resolve(spec, responses[status]["content"]["application/json"]["schema"])

    answer = schema("200")
    forms = [_resolve(spec, s) for s in answer["oneOf"]]
    assert forms == [schemas["Prediction"], schemas["Predictions"]]
    assert schemas["Prediction"]["additionalProperties"] is False
    assert set(schemas["Prediction"]["required"]) == set(Prediction.model_fields)
    assert schemas["Prediction"]["properties"]["decision"]["enum"] == ["full", "category", "abstain"]
    assert all(p.get("description") for p in schemas["Prediction"]["properties"].values())
    assert forms[1]["properties"]["predictions"]["items"] == {"$ref": "#/components/schemas/Prediction"}
    assert "errors" in schema("422")["required"]
    for status in ("408", "413", "503"):
        assert schema(status) == schemas["ErrorBody"]


def test_openapi_documents_the_other_routes(single):
    spec = single.get("/openapi.json").json()
    documented = {
        ("/v1/model", "get"): "ModelInfo",
        ("/readyz", "get"): "Ready",
        ("/healthz", "get"): "Health",
        ("/admin/reload", "post"): "Reloaded",
    }
    for (path, method), name in documented.items():
        ok = spec["paths"][path][method]["responses"]["200"]["content"]["application/json"]["schema"]
        assert ok == {"$ref": f"#/components/schemas/{name}"}, path
    assert {"401", "403", "409", "422"} <= set(spec["paths"]["/admin/reload"]["post"]["responses"])
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]


def _resolve(spec: dict, schema: dict) -> dict:
    ref = schema.get("$ref")
    return spec["components"]["schemas"][ref.rsplit("/", 1)[1]] if ref else schema


@pytest.mark.parametrize("page", ["README.md", "docs/guides/training.md"])
def test_the_predictions_the_docs_show_fit_the_model(page: str):
    blocks = re.findall(r"```json\n(\{\"text\".*?)```", (REPO / page).read_text(), flags=re.DOTALL)
    assert blocks, f"{page} shows no prediction"
    for block in blocks:
        Prediction.model_validate(json.loads(block))
