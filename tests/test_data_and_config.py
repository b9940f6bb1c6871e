"""Reading labeled files and configuration; every failure is one clear error."""

from __future__ import annotations

import pandas as pd
import pytest

from shelver.config import TrainConfig, load_config
from shelver.data import read_labeled, read_queries, read_table, write_table
from shelver.errors import ConfigError, DataError


def test_level_columns_and_path_column_agree(tmp_path, taxonomy, tiny_frames):
    frame = tiny_frames["valid"]
    frame.to_csv(tmp_path / "levels.csv", index=False)
    frame.assign(path=frame["category"] + " > " + frame["subcategory"])[["text", "path"]].to_json(
        tmp_path / "paths.jsonl", orient="records", lines=True
    )
    frame.to_parquet(tmp_path / "levels.parquet")
    loaded = [read_labeled(tmp_path / f, taxonomy) for f in ("levels.csv", "paths.jsonl", "levels.parquet")]
    for data in loaded[1:]:
        assert data.texts == loaded[0].texts
        assert (data.y == loaded[0].y).all()
    assert set(loaded[0].source) == {"human"}


@pytest.mark.parametrize("name", ["t.csv", "t.parquet", "t.pq", "t.jsonl", "t.ndjson"])
def test_write_table_by_suffix_reads_back_and_leaves_no_partial(tmp_path, name):
    frame = pd.DataFrame({"text": ["red boots", "NA"], "category": ["Shoes", "Shoes"]})
    out = write_table(frame, tmp_path / "sub" / name)
    assert out == tmp_path / "sub" / name
    assert read_table(out).astype(str).equals(frame)
    assert [p.name for p in out.parent.iterdir()] == [name]


def test_write_table_refuses_an_unknown_suffix(tmp_path):
    with pytest.raises(DataError, match=r"cannot write 't\.xlsx': use a \.csv, \.parquet or \.jsonl"):
        write_table(pd.DataFrame({"text": ["x"]}), tmp_path / "t.xlsx")
    assert not (tmp_path / "t.xlsx").exists()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"query": "x", "category": "Shoes", "subcategory": "Boots"}], "has no 'text' column"),
        ([{"text": "x", "category": "Shoes"}], "has no label columns"),
        ([{"text": " ", "category": "Shoes", "subcategory": "Boots"}], "row 1 has an empty 'text'"),
        (
            [
                {"text": "x", "category": "Shoes", "subcategory": "Clogs"},
                {"text": "y", "category": "Shoes", "subcategory": "Clogs"},
            ],
            r"'Clogs' is not in the taxonomy under 'Shoes' \(row 1 of bad.csv\) \(and 1 more like it\)",
        ),
        ([{"text": "x", "category": "Bags", "subcategory": "Boots"}], "its parent is 'Shoes'"),
    ],
)
def test_bad_labeled_files(tmp_path, taxonomy, rows, message):
    pd.DataFrame(rows).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=message):
        read_labeled(tmp_path / "bad.csv", taxonomy)


def test_empty_and_missing_files(tmp_path, taxonomy):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="cannot be read|is empty"):
        read_labeled(tmp_path / "empty.csv", taxonomy)
    (tmp_path / "header.csv").write_text("text,category,subcategory\n")
    with pytest.raises(DataError, match="has no rows"):
        read_labeled(tmp_path / "header.csv", taxonomy)
    with pytest.raises(DataError, match="does not exist"):
        read_labeled(tmp_path / "nope.csv", taxonomy)


def test_plain_text_queries_skip_blank_lines(tmp_path):
    (tmp_path / "q.txt").write_text("red boots\n\n  \nblue bag\n")
    assert read_queries(tmp_path / "q.txt") == ["red boots", "blue bag"]


def test_config_layers(tmp_path):
    (tmp_path / "c.toml").write_text('seed = 3\n[head]\nkind = "flat"\nC = 2\n')
    config = load_config(
        tmp_path / "c.toml", ["head.C=5", "encoder.name=hashing", "head.class_weight=balanced"]
    )
    assert config.seed == 3 and config.head.kind == "flat" and config.head.C == 5.0
    assert config.encoder.name == "hashing" and config.head.class_weight == "balanced"
    assert load_config() == TrainConfig()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("head.kindd=flat", "unknown config key 'head.kindd'; valid keys here: head.kind"),
        ("nonsense", "--set expects key=value"),
        ("seed=abc", "config key 'seed' expects int"),
        ("encoder.finetune=maybe", 'encoder.finetune is true, false or "auto"'),
        ("encoder.finetune=3", "config key 'encoder.finetune' expects bool | str"),
    ],
)
def test_bad_config(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("value", [True, False, "auto"])
def test_finetune_reads_true_false_and_auto(value):
    written = {True: "true", False: "false", "auto": "auto"}[value]
    assert load_config(None, [f"encoder.finetune={written}"]).encoder.finetune == value


@pytest.mark.parametrize(
    ("setting", "gpu", "workdir", "expected"),
    [
        ("auto", True, "w", True),
        ("auto", False, "w", False),
        ("auto", True, None, False),  # nowhere to write the encoder: stay frozen
        (True, False, "w", True),
        (False, True, "w", False),
    ],
)
def test_auto_finetunes_only_with_a_gpu_and_a_workdir(monkeypatch, setting, gpu, workdir, expected):
    import torch

    from shelver.config import EncoderConfig
    from shelver.training import wants_finetune

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert wants_finetune(EncoderConfig(finetune=setting), workdir) is expected
    for torch_free in ("hashing", "static:tables/minilm", "onnx:model/onnx"):  # nothing to fine-tune
        assert wants_finetune(EncoderConfig(name=torch_free, finetune="auto"), workdir) is False


def test_config_default_reads_the_dataclass_default_of_a_dotted_key():
    from shelver.config import config_default

    assert config_default("decision.target_precision") is None
    assert config_default("head.kind") == "auto" and config_default("encoder.name") == "minilm"
    with pytest.raises(ConfigError, match="unknown config key 'head.size'"):
        config_default("head.size")
