"""``classify-batch``: every row classified, in input order, locally and on Ray (local mode)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from shelver.answer_memo import AnswerMemo
from shelver.batch import BatchClassifier, batch_sizes, classify_batch, decision_columns
from shelver.batch_io import Source, read_rows, write_parquet
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
    assert columns["shelver_paths"] == [[["x"]], None]  # lists stay lists, never JSON text


ARROW_TYPES = {
    "shelver_category": pa.string(),
    "shelver_confidence_category": pa.float64(),
    "shelver_confidence_subcategory": pa.float64(),
    "shelver_decision": pa.string(),
    "shelver_paths": pa.list_(pa.list_(pa.string())),
    "shelver_candidate": pa.list_(pa.string()),
}


def test_output_is_arrow_native_and_round_trips_without_json(hashing_model_dir, queries, tmp_path):
    queries.to_parquet(tmp_path / "in.parquet")
    classify_batch(hashing_model_dir, tmp_path / "in.parquet", tmp_path / "out.parquet", progress=False)
    table = pq.read_table(tmp_path / "out.parquet")
    assert {name: table.schema.field(name).type for name in ARROW_TYPES} == ARROW_TYPES
    expected = [p.to_dict() for p in load_model(hashing_model_dir).classify(queries["text"].tolist())]
    assert table.column("shelver_paths").to_pylist() == [p["paths"] for p in expected]
    assert table.column("shelver_candidate").to_pylist() == [p["candidate"] for p in expected]
    assert table.column("shelver_confidence_subcategory").to_pylist() == [
        p["confidence"][1] for p in expected
    ]


def test_duckdb_reads_the_lists_as_lists(hashing_model_dir, queries, tmp_path):
    duckdb = pytest.importorskip("duckdb")
    queries.to_parquet(tmp_path / "in.parquet")
    classify_batch(hashing_model_dir, tmp_path / "in.parquet", tmp_path / "out.parquet", progress=False)
    sql = (
        "SELECT id, shelver_candidate[1] AS category, len(shelver_paths) AS n, shelver_paths[1][2] AS leaf "
        f"FROM read_parquet('{tmp_path / 'out.parquet'}') ORDER BY id"
    )
    rows = duckdb.sql(sql).fetchall()
    expected = [p.to_dict() for p in load_model(hashing_model_dir).classify(queries["text"].tolist())]
    assert [r[1] for r in rows] == [p["candidate"][0] for p in expected]
    assert [r[2] for r in rows] == [len(p["paths"]) for p in expected]
    assert [r[3] for r in rows] == [p["paths"][0][1] if p["paths"] else None for p in expected]


def test_csv_output_writes_lists_as_json_text(hashing_model_dir, queries, tmp_path):
    import json

    queries.to_parquet(tmp_path / "in.parquet")
    classify_batch(hashing_model_dir, tmp_path / "in.parquet", tmp_path / "out.csv", progress=False)
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    expected = [p.to_dict() for p in load_model(hashing_model_dir).classify(queries["text"].tolist())]
    assert out["id"].tolist() == queries["id"].tolist()
    assert [json.loads(v) for v in out["shelver_paths"]] == [p["paths"] for p in expected]
    assert [json.loads(v) for v in out["shelver_candidate"]] == [p["candidate"] for p in expected]
    with pytest.raises(ConfigError, match="for a CSV file use --engine local"):
        classify_batch(hashing_model_dir, tmp_path / "in.parquet", tmp_path / "o.csv", engine="ray")


def test_a_first_batch_of_abstentions_still_types_paths_as_lists_of_lists():
    from shelver.batch import _arrow_type

    assert _arrow_type([[], []], "shelver_paths") == pa.list_(pa.list_(pa.string()))
    assert _arrow_type([[], None], "shelver_candidate") == pa.list_(pa.string())
    assert _arrow_type([[["a", "b"]], []], "shelver_paths") == pa.list_(pa.list_(pa.string()))


def test_batch_errors_name_the_fix(hashing_model_dir, queries, tmp_path):
    queries.rename(columns={"text": "query"}).to_parquet(tmp_path / "q.parquet")
    with pytest.raises(DataError, match=r"q.parquet has no 'text' column .* pass --text-column NAME"):
        classify_batch(hashing_model_dir, tmp_path / "q.parquet", tmp_path / "o.parquet", progress=False)
    # checked before Ray starts, so the user sees one line, not an actor's traceback
    with pytest.raises(DataError, match=r"has no 'text' column .* pass --text-column NAME"):
        classify_batch(
            hashing_model_dir, tmp_path / "q.parquet", tmp_path / "o", engine="ray", progress=False
        )
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"holds no \.parquet or \.csv files"):
        classify_batch(hashing_model_dir, tmp_path / "empty", tmp_path / "o.parquet", progress=False)
    with pytest.raises(ConfigError, match="unknown engine 'spark'; choose one of local, ray"):
        classify_batch(hashing_model_dir, tmp_path / "q.parquet", tmp_path / "o.parquet", engine="spark")
    with pytest.raises(ConfigError, match="--shard-rows must be a positive number of rows, got 0"):
        classify_batch(hashing_model_dir, tmp_path / "q.parquet", tmp_path / "o.parquet", shard_rows=0)


def test_bad_csv_input_is_one_line_naming_the_fix(hashing_model_dir, queries, tmp_path):
    (tmp_path / "none").mkdir()
    queries.iloc[:0].to_csv(tmp_path / "none" / "a.csv", index=False)  # a header and no rows
    with pytest.raises(DataError, match=r"none has no rows to classify; pass a file or folder with queries"):
        classify_batch(hashing_model_dir, tmp_path / "none", tmp_path / "o.parquet", progress=False)
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(DataError, match=r"cannot read .*blank.csv as csv \(Empty CSV file\); fix or remove"):
        classify_batch(hashing_model_dir, tmp_path / "blank.csv", tmp_path / "o.parquet", progress=False)
    result = CliRunner().invoke(
        main,
        [
            "classify-batch",
            "--model",
            str(hashing_model_dir),
            "--input",
            str(tmp_path / "blank.csv"),
            "--output",
            str(tmp_path / "o.parquet"),
        ],
    )
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output


def test_local_progress_bar_counts_rows_per_second(hashing_model_dir, queries, tmp_path, capsys):
    queries.to_parquet(tmp_path / "in.parquet")
    classify_batch(hashing_model_dir, tmp_path / "in.parquet", tmp_path / "o.parquet", batch_rows=8)
    bar = capsys.readouterr().err
    assert "classifying: 100%" in bar and f"{len(queries)}.0/{len(queries)}.0" in bar and "row/s]" in bar


# ---- shards: any row range of the input, in the batches both engines share ------------------
def test_read_rows_returns_any_range_across_files_and_row_groups(queries, tmp_path):
    table = pa.Table.from_pandas(queries, preserve_index=False)
    files = []
    for i, (start, stop) in enumerate([(0, 30), (30, 30), (30, len(queries))]):  # the middle file is empty
        files.append(str(tmp_path / f"{i}.parquet"))
        pq.write_table(table.slice(start, stop - start), files[-1], row_group_size=7)
    source = Source(tuple(files), "parquet", (30, 0, len(queries) - 30))
    for start, stop in [(0, len(queries)), (5, 6), (13, 47), (29, 31), (len(queries) - 1, len(queries))]:
        got = pa.concat_tables(read_rows(source, start, stop, batch_rows=4))
        assert got.column("id").to_pylist() == queries["id"].tolist()[start:stop]


def test_batches_never_straddle_shards():
    assert list(batch_sizes(23, shard_rows=10, batch_rows=4)) == [4, 4, 2, 4, 4, 2, 3]
    assert sum(batch_sizes(100_003, 50_000, 2048)) == 100_003


def test_write_parquet_leaves_no_partial_file_when_it_fails(tmp_path):
    def tables():
        yield pa.table({"a": [1, 2]})
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        write_parquet(tables(), tmp_path / "part-00000.parquet")
    assert list(tmp_path.iterdir()) == []
    assert write_parquet(iter([pa.table({"a": [1]}), pa.table({"a": [2]})]), tmp_path / "p.parquet") == 2
    assert [p.name for p in tmp_path.iterdir()] == ["p.parquet"]


# ---- Ray (local mode): one Ray for the module; parts in input order, answers as local ----------
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _write_input(queries: pd.DataFrame, layout: str, root: Path) -> Path:
    if layout == "parquet file":
        queries.to_parquet(root / "in.parquet", row_group_size=9)
        return root / "in.parquet"
    (root / "in").mkdir()
    for i, start in enumerate(range(0, len(queries), 23)):  # partitions that shards straddle
        part = queries.iloc[start : start + 23]
        if layout == "csv folder":
            part.to_csv(root / "in" / f"p{i:02d}.csv", index=False)
        else:
            part.to_parquet(root / "in" / f"p{i:02d}.parquet")
    return root / "in"


@pytest.mark.parametrize("layout", ["parquet file", "parquet folder", "csv folder"])
def test_ray_parts_keep_rows_and_order_and_match_local(
    ray_local, hashing_model_dir, queries, tmp_path, layout
):
    source = _write_input(queries, layout, tmp_path)
    sizes = {"batch_rows": 4, "shard_rows": 10, "progress": False}
    local = classify_batch(hashing_model_dir, source, tmp_path / "local.parquet", **sizes)
    result = classify_batch(hashing_model_dir, source, tmp_path / "out", engine="ray", actors=2, **sizes)
    shards = -(-len(queries) // 10)
    assert shards >= 5
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"part-{i:05d}.parquet" for i in range(shards)
    ]
    out = pd.read_parquet(tmp_path / "out")
    assert result.rows == local.rows == len(out) == len(queries)
    assert out["id"].tolist() == queries["id"].tolist()
    pd.testing.assert_frame_equal(out, pd.read_parquet(local.output))


def test_ray_refuses_a_folder_holding_an_earlier_run(hashing_model_dir, queries, tmp_path):
    queries.to_parquet(tmp_path / "in.parquet")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "part-00007.parquet").write_bytes(b"")
    with pytest.raises(
        DataError, match=r"out is not empty \(1 entries\); .* remove it or pass another --output"
    ):
        classify_batch(hashing_model_dir, tmp_path / "in.parquet", tmp_path / "out", engine="ray")


def test_ray_engine_with_the_onnx_model(ray_local, onnx_model_dir, queries, tmp_path):
    queries.to_parquet(tmp_path / "in.parquet")
    sizes = {"batch_rows": 16, "shard_rows": 32, "progress": False}
    classify_batch(onnx_model_dir, tmp_path / "in.parquet", tmp_path / "out", engine="ray", **sizes)
    local = classify_batch(onnx_model_dir, tmp_path / "in.parquet", tmp_path / "local.parquet", **sizes)
    out, expected = pd.read_parquet(tmp_path / "out"), pd.read_parquet(local.output)
    assert out["id"].tolist() == queries["id"].tolist()
    # the same batches go through the int8 encoder on both engines, so the paths agree
    columns = ["shelver_category", "shelver_subcategory"]
    assert out[columns].equals(expected[columns])


def test_repeated_queries_are_classified_once_per_shard(hashing_model_dir, queries, tmp_path):
    texts = queries["text"].tolist()[:12]
    log = pd.DataFrame({"id": range(60), "text": [texts[i % len(texts)] for i in range(60)]})
    log.to_parquet(tmp_path / "log.parquet")
    seen: list[str] = []
    original = BatchClassifier.decisions

    def spy(self, batch):
        calls = self.model.classify
        self.model.classify = lambda new: seen.extend(new) or calls(new)
        try:
            return original(self, batch)
        finally:
            self.model.classify = calls

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BatchClassifier, "decisions", spy)
        classify_batch(
            hashing_model_dir,
            tmp_path / "log.parquet",
            tmp_path / "o.parquet",
            batch_rows=8,
            shard_rows=30,
            progress=False,
        )
    assert sorted(seen) == sorted(texts * 2)  # two shards, each text once in each
    out = pd.read_parquet(tmp_path / "o.parquet")
    expected = load_model(hashing_model_dir).predict(log["text"].tolist())
    assert out[["shelver_category", "shelver_subcategory"]].to_numpy().tolist() == expected.tolist()


def test_memo_keeps_the_most_recently_used_texts():
    memo = AnswerMemo(2)
    memo.put({"a": {"n": 1}, "b": {"n": 2}})
    assert memo.get_many(["a"]) == {"a": {"n": 1}}
    memo.put({"a": {"n": 1}, "c": {"n": 3}})  # "b" is the least recently used
    assert memo.get_many(["a", "b", "c"]) == {"a": {"n": 1}, "c": {"n": 3}}


def test_answer_memo_get_refreshes_and_size_zero_keeps_nothing():
    memo = AnswerMemo(2)
    memo.put({"a": {"n": 1}, "b": {"n": 2}})
    assert memo.get("a") == {"n": 1} and memo.get("z") is None
    memo.put({"c": {"n": 3}})  # "a" was read last, so "b" goes
    assert memo.get_many(["b", "a", "c", "a"]) == {"a": {"n": 1}, "c": {"n": 3}}
    memo.clear()
    assert len(memo) == 0
    off = AnswerMemo(0)
    off.put({"a": {"n": 1}})
    assert len(off) == 0 and off.get("a") is None
