"""``shelver export``: the ONNX encoder agrees with PyTorch, is recorded and hashed, runs without torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from shelver.encoders import make_encoder
from shelver.encoders.onnx import OnnxEncoder
from shelver.errors import ModelDirError
from shelver.export import ExportCheck, ExportError, _require, export_onnx
from shelver.model_dir import load_model

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_onnx_path_predicts_like_pytorch(onnx_model_dir, tiny_frames):
    texts = [*tiny_frames["test"]["text"].tolist(), "", "👟", "x" * 400]
    torch_model = load_model(onnx_model_dir)
    onnx_model = load_model(onnx_model_dir, encoder="onnx")
    assert isinstance(onnx_model.encoder_, OnnxEncoder)
    agreement = np.mean((torch_model.predict(texts) == onnx_model.predict(texts)).all(axis=1))
    assert agreement >= 0.995
    cosine = (torch_model.embed(texts) * onnx_model.embed(texts)).sum(axis=1)
    assert cosine.min() > 0.97
    np.testing.assert_allclose(np.linalg.norm(onnx_model.embed(texts), axis=1), 1.0, atol=1e-4)


def test_export_is_recorded_and_hashed(onnx_model_dir, tmp_path):
    manifest = json.loads((onnx_model_dir / "manifest.json").read_text())
    export = manifest["exports"]["onnx"]
    assert export["quantization"] == "dynamic int8, per channel"
    assert export["check"]["agreement"] >= export["check"]["min_agreement"] == 0.995
    assert {"onnx/model.onnx", "onnx/tokenizer.json", "onnx/encoder.json"} <= set(manifest["files"])
    config = json.loads((onnx_model_dir / "onnx" / "encoder.json").read_text())
    assert config["max_seq_length"] == 32 and config["pooling"] == "mean" and config["dim"] == 384
    tampered = Path(shutil.copytree(onnx_model_dir, tmp_path / "tampered"))
    with open(tampered / "onnx" / "model.onnx", "ab") as file:
        file.write(b"\0")
    with pytest.raises(ModelDirError, match=r"onnx/model.onnx was modified after the model was saved"):
        load_model(tampered, encoder="serving")


def test_serving_load_imports_no_torch(onnx_model_dir):
    code = (
        "import sys; from shelver.model_dir import load_model;"
        f"m = load_model({str(onnx_model_dir)!r}, encoder='serving');"
        "print(m.predict(['red sneakers'])[0].tolist());"
        "print(sorted(k for k in ('torch', 'sentence_transformers', 'transformers') if k in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["['Shoes', 'Sneakers']", "[]"]


def test_make_encoder_builds_the_onnx_encoder(onnx_model_dir):
    encoder = make_encoder(f"onnx:{onnx_model_dir / 'onnx'}", max_seq_length=32, threads=1)
    vectors = encoder.encode(["boots", "ankle boot", "tote bag"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    assert len(encoder.fingerprint()) == 64


def test_agreement_below_the_bar_fails_with_the_figures(tmp_path):
    check = ExportCheck(
        2000,
        0.9875,
        0.991,
        0.93,
        [{"text": "red boots", "pytorch": "Shoes > Boots", "onnx": "Bags > Handbags"}],
    )
    with pytest.raises(
        ExportError,
        match=r"match PyTorch on 98\.75% of 2,000 texts .*cosine mean 0\.9910, min 0\.9300\)"
        r".*below the required 99\.50%.*'red boots'",
    ):
        _require(check, 0.995, tmp_path)


def test_nothing_to_export_for_a_torch_free_encoder(hashing_model_dir):
    with pytest.raises(
        ExportError, match="is not a sentence-transformers model, so there is nothing to export"
    ):
        export_onnx(hashing_model_dir, progress=False)


def test_serving_without_an_export_names_the_fix(tmp_path, onnx_model_dir, hashing_model_dir):
    assert load_model(hashing_model_dir, encoder="serving").encoder_.spec.startswith("hashing")
    with pytest.raises(ModelDirError, match="has no ONNX export"):
        load_model(hashing_model_dir, encoder="onnx")
    stale = Path(shutil.copytree(onnx_model_dir, tmp_path / "stale"))
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["exports"]["onnx"]["source_fingerprint"] = "0" * 64
    (stale / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelDirError, match="stale after retraining"):
        load_model(stale, encoder="serving")


@pytest.mark.slow
def test_a_failed_export_writes_nothing(onnx_model_dir, tmp_path, tiny_frames):
    copy = Path(shutil.copytree(onnx_model_dir, tmp_path / "m", ignore=shutil.ignore_patterns("onnx")))
    with pytest.raises(ExportError, match=r"below the required 101\.00%"):
        export_onnx(copy, tiny_frames["valid"]["text"].tolist(), min_agreement=1.01, progress=False)
    assert not (copy / "onnx").exists() and not list(copy.glob(".onnx*"))


def test_recalibrating_in_place_keeps_the_export(onnx_model_dir, tmp_path, tiny_frames):
    copy = Path(shutil.copytree(onnx_model_dir, tmp_path / "m"))
    valid = tiny_frames["valid"]
    model = load_model(copy).set_params(target_precision=0.9)
    model.calibrate(valid["text"].tolist(), valid[["category", "subcategory"]].to_numpy()).save(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    assert "onnx" in manifest["exports"] and any(f.startswith("onnx/") for f in manifest["files"])
    served = load_model(copy, encoder="serving")
    assert served.encoder_.spec.startswith("onnx:")
    assert served.thresholds_ == model.thresholds_
