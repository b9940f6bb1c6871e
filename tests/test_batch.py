"""``classify-batch``: every row classified, in input order, locally and on Ray (local mode)."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

from shelver.batch import classify_batch, decision_columns
from shelver.cli import main
from shelver.errors import ConfigError, DataError
from shelver.model_dir import load_model


@pytest.fixture(scope="module")
def queries(tiny_frames) -> pd.DataFrame:
    frame = pd.concat([tiny_frames["test"], tiny_frames["valid"]], ignore_index=True)
    frame.insert(0, "id", [f"q{i:04d}" for i in range(len(frame))])
    return frame.rename(columns={"category": "gold_category"})


def test_local_parquet_keeps_rows_order_and_matches_the_model(hashing_model_dir, queries, tmp_path):
    queries.to_parquet(tmp_path / "in.parquet")
    result = classify_batch(
        hashing_model_dir, tmp_path / "in.parquet", tmp_path / "out.parquet", batch_rows=7, progress=False
    )
    out = pd.read_parquet(result.output)
    assert result.rows == len(out) == len(queries)
    assert out["id"].tolist() == queries["id"].tolist()
    expected = load_model(hashing_model_dir).predict(queries["text"].tolist())
    assert out[["shelver_category", "shelver_subcategory"]].to_numpy().tolist() == expected.tolist()
    assert (out["shelver_confidence_subcategory"] <= out["shelver_confidence_category"] + 1e-6).all()
    assert list(out.columns[: len(queries.columns)]) == list(queries.columns)


def test_local_csv_folder_of_partitions(hashing_model_dir, queries, tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    for i, start in enumerate(range(0, len(queries), 20)):
        queries.iloc[start : start + 20].to_csv(parts / f"part-{i:03d}.csv", index=False)
    runner = CliRunner()
    args = [
        "classify-batch",
        "--model",
        str(hashing_model_dir),
        "--input",
        str(parts),
        "--output",
        str(tmp_path / "o.parquet"),
        "--quiet",
    ]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    out = pd.read_parquet(tmp_path / "o.parquet")
    assert out["id"].tolist() == queries["id"].tolist()  # partitions read in name order
    assert pd.api.types.is_string_dtype(out["id"])  # CSV columns stay text: ids keep their form


def test_decision_columns_flatten_any_prediction_fields():
    rows = [
        {
            "text": "a",
            "path": ["Shoes", "Boots"],
            "confidence": [0.9, 0.8],
            "decision": "path",
            "paths": [["x"]],
        },
        {"text": "b", "path": ["Shoes", ""], "confidence": [0.6, 0.2], "decision": "parent", "reason": "low"},
    ]
    columns = decision_columns(rows, ["category", "subcategory"])
    assert columns["shelver_subcategory"] == ["Boots", None]
    assert columns["shelver_decision"] == ["path", "parent"]
    assert columns["shelver_reason"] == [None, "low"]
    assert columns["shelver_paths"] == ['[["x"]]', None]


def test_batch_errors_name_the_fix(hashing_model_dir, queries, tmp_path):
    queries.rename(columns={"text": "query"}).to_parquet(tmp_path / "q.parquet")
    with pytest.raises(DataError, match=r"has no 'text' column .* pass --text-column NAME"):
        classify_batch(hashing_model_dir, tmp_path / "q.parquet", tmp_path / "o.parquet", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no \.parquet or \.csv files"):
        classify_batch(hashing_model_dir, tmp_path / "empty", tmp_path / "o.parquet", progress=False)
    with pytest.raises(ConfigError, match="unknown engine 'spark'; choose one of local, ray"):
        classify_batch(hashing_model_dir, tmp_path / "q.parquet", tmp_path / "o.parquet", engine="spark")


def test_ray_engine_in_local_mode(onnx_model_dir, queries, tmp_path):
    pytest.importorskip("ray")
    parts = tmp_path / "in"
    parts.mkdir()
    for i, start in enumerate(range(0, len(queries), 25)):
        queries.iloc[start : start + 25].to_parquet(parts / f"part-{i:03d}.parquet")
    result = classify_batch(
        onnx_model_dir, parts, tmp_path / "out", engine="ray", batch_rows=16, progress=False
    )
    out = pd.read_parquet(tmp_path / "out")
    assert result.rows == len(out) == len(queries)
    assert out["id"].tolist() == queries["id"].tolist()
    local = load_model(onnx_model_dir, encoder="serving").predict(queries["text"].tolist())
    agree = (out[["shelver_category", "shelver_subcategory"]].to_numpy() == local).all(axis=1).mean()
    assert agree >= 0.9  # int8 activations are scaled per batch, so batch neighbours shift a few near-ties
