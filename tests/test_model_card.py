"""The model card: README.md in every model directory, hashed like every other file, honest about
what the thresholds were fitted on, and rewritten by calibrate, export, evaluations and bootstrap."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import make_rows

from shelver import HierarchicalClassifier, load_model
from shelver.errors import ModelDirError
from shelver.model_card import CARD_FILE
from shelver.model_dir import record_export, refresh_model_card

UNVERIFIED = "unverified on real queries"


def _xy(frame):
    return frame["text"].tolist(), frame[["category", "subcategory"]].to_numpy().astype(str)


@pytest.fixture(scope="module")
def fitted(taxonomy, tiny_frames):
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing:256", target_precision=0.9)
    return model.fit(*_xy(tiny_frames["train"]))


def _card(root: Path) -> tuple[dict, str]:
    text = (root / CARD_FILE).read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def _saved(model, root: Path) -> Path:
    model.save(root)
    return root


def test_save_writes_a_hugging_face_card_that_the_manifest_hashes(fitted, taxonomy, tmp_path):
    from copy import deepcopy

    root = _saved(deepcopy(fitted), tmp_path / "model")  # fitted, never calibrated
    meta, body = _card(root)
    assert meta["library_name"] == "shelver" and meta["pipeline_tag"] == "text-classification"
    assert meta["shelver"]["taxonomy_hash"] == taxonomy.hash
    assert meta["shelver"]["levels"] == ["category", "subcategory"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert CARD_FILE in manifest["files"]
    for section in ("## Taxonomy", "## Training data", "## Configuration", "## Evaluation", "## How to use"):
        assert section in body
    assert f"`{taxonomy.hash}`" in body
    assert "**126 training rows**" in body and manifest["training"]["fingerprint"] in body
    assert f"**The thresholds are {UNVERIFIED}:** the model was not calibrated" in body
    assert "- valid: not measured" in body and "- test: not measured" in body
    assert "shelver serve --model model" in body and 'shelver.load_model("model")' in body
    load_model(root)  # the card's hash checks out


def test_the_training_rows_are_summed_up_by_source(taxonomy, tiny_frames, tmp_path):
    texts, y = _xy(tiny_frames["train"])
    source = ["human"] * 100 + ["llm:smollm2"] * 20 + ["synthetic:titles"] * 6
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing:256").fit(texts, y, source)
    root = _saved(model, tmp_path / "model")
    _, body = _card(root)
    assert "- **120 training rows** counted" in body  # synthetic rows train but are not counted
    assert "- By source: 100 human, 20 llm:smollm2, 6 synthetic:titles (every row that trained" in body
    assert load_model(root).train_sources_ == {"human": 100, "llm:smollm2": 20, "synthetic:titles": 6}


def test_a_tampered_card_is_refused_like_any_other_file(fitted, tmp_path):
    root = _saved(fitted, tmp_path / "model")
    card = root / CARD_FILE
    card.write_text(card.read_text().replace("not calibrated", "calibrated on 10,000 real queries"))
    with pytest.raises(ModelDirError, match="README.md was modified after the model was saved"):
        load_model(root)


def test_thresholds_fitted_on_human_labels_name_their_rows_and_guarantee(fitted, tiny_frames, tmp_path):
    from copy import deepcopy

    model = deepcopy(fitted).calibrate(*_xy(tiny_frames["valid"]))
    _, body = _card(_saved(model, tmp_path / "model"))
    assert UNVERIFIED not in body
    assert "The thresholds were fitted on 36 human-labeled rows." in body
    levels = model.calibrated_on_["levels"]
    assert f"| level2 | `{levels['level2']['method']}` | {levels['level2']['threshold']:.4g} |" in body
    assert "lower_bound" in body and "| target precision | 0.9 |" in body


def test_thresholds_fitted_on_machine_labels_are_unverified(fitted, tiny_frames, tmp_path):
    from copy import deepcopy

    texts, y = _xy(tiny_frames["valid"])
    model = deepcopy(fitted).calibrate(texts, y, ["llm:smollm2"] * len(texts))
    _, body = _card(_saved(model, tmp_path / "model"))
    assert f"**The thresholds are {UNVERIFIED}:** they were fitted on 36 rows labeled by llm:smollm2" in body


def test_an_older_or_newer_record_is_rendered_and_never_called_verified(fitted, tmp_path):
    from copy import deepcopy

    model = deepcopy(fitted)
    # the record before sources were kept, with a key this card does not know yet
    model.calibrated_on_ = {
        "n": 12,
        "fingerprint": "abc",
        "target_precision": 0.9,
        "conformal": {"alpha": 0.05},
    }
    _, body = _card(_saved(model, tmp_path / "model"))
    assert (
        f"**The thresholds are {UNVERIFIED}:** they were fitted on 12 rows of unrecorded provenance" in body
    )
    assert "| conformal.alpha | 0.05 |" in body


def test_evaluations_in_the_directory_and_the_selection_record_go_on_the_card(tiny_files, taxonomy, tmp_path):
    from shelver.config import load_config
    from shelver.data import read_labeled
    from shelver.report import evaluate, write_report
    from shelver.training import train_model

    train, valid = (read_labeled(tiny_files[split], taxonomy) for split in ("train", "valid"))
    # the head left at "auto": train_model chooses it on valid and records how in selection_
    model = train_model(load_config(None, ["encoder.name=hashing"]), taxonomy, train, False, valid)
    root = _saved(model, tmp_path / "model")
    write_report(evaluate(model, read_labeled(tiny_files["test"], taxonomy)), root / "test")
    refresh_model_card(root)
    _, body = _card(root)
    assert "| test | 36 |" in body and "- valid: not measured" in body
    assert "- test: not measured" not in body
    assert "How the configuration was chosen (`selection.json`)" in body
    assert f"| chosen.head | `{model.selection_['chosen']['head']}` |" in body
    assert "`candidates`:" in body and "| head |" in body  # a table, one row per candidate
    load_model(root)  # the manifest holds the rewritten card's hash


def test_an_export_rewrites_the_card_and_keeps_the_manifest_consistent(fitted, tmp_path):
    root = _saved(fitted, tmp_path / "model")
    (root / "onnx").mkdir()
    (root / "onnx" / "config.json").write_text("{}")
    check = {"n": 40, "agreement": 1.0, "min_agreement": 0.99}
    record_export(
        root, "onnx", ["onnx/config.json"], {"directory": "onnx", "quantization": "int8", "check": check}
    )
    _, body = _card(root)
    assert "ONNX encoder in `onnx/`, int8; its predictions match PyTorch's on 100.00% of 40" in body
    load_model(root)


def _shelver(*args) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "shelver.cli", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)


def test_train_and_calibrate_commands_write_an_up_to_date_card(tiny_files, tmp_path):
    out = tmp_path / "model"
    data = [
        "--taxonomy",
        tiny_files["taxonomy"],
        "--train",
        tiny_files["train"],
        "--valid",
        tiny_files["valid"],
    ]
    trained = _shelver("train", *data, "--out", out, "--set", "encoder.name=hashing", "--quiet")
    assert trained.returncode == 0, trained.stderr
    _, body = _card(out)
    assert "| valid | 36 |" in body  # evaluated after the save, then put on the card
    assert "- By source: 126 human (" in body  # a file without a source column: people's labels
    assert "no target precision chose the thresholds" in body
    assert "The full training configuration (`train_config.json`)" in body
    calibrated = _shelver(
        "calibrate", "--model", out, "--valid", tiny_files["valid"], "--target-precision", "0.9"
    )
    assert calibrated.returncode == 0, calibrated.stderr
    _, body = _card(out)
    assert "The thresholds were fitted on 36 human-labeled rows." in body and "| valid | 36 |" in body
    load_model(out)


def test_bootstraps_served_model_has_a_card_with_both_evaluations(tiny_files, tmp_path):
    from shelver.pipeline import RunContext, load_bootstrap_config, run_pipeline

    log = tmp_path / "log.csv"
    make_rows(14, 0)[["text"]].to_csv(log, index=False)
    fast = ("label.encoder=hashing", "train.encoder.name=hashing", "select.min_confidence=0.0")
    config = load_bootstrap_config(None, fast)
    ctx = RunContext(
        tiny_files["taxonomy"], log, tmp_path / "run", config, tiny_files["test"], progress=False
    )
    run_pipeline(ctx, None, echo=lambda line: None)
    model = tmp_path / "run" / "export" / "model"
    _, body = _card(model)
    assert "| valid |" in body and "| real_sample | 36 |" in body
    fitted_on = json.loads((model / "calibration.json").read_text())["fitted_on"]
    if fitted_on["human"]:  # the labeled sample set the thresholds
        assert "The thresholds were fitted on" in body and "human-labeled rows" in body
        assert f"**The thresholds are {UNVERIFIED}:**" not in body
    else:  # the embedding labeler's rows did: no person checked them
        assert f"**The thresholds are {UNVERIFIED}:** they were fitted on" in body
        assert "rows labeled by embedding" in body
    shutil.rmtree(tmp_path / "run" / "train")  # the export stands alone
    load_model(model)
