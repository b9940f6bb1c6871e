"""``shelver export``: the ONNX encoder agrees with PyTorch, is recorded and hashed, runs without torch."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from shelver import export
from shelver.encoders import make_encoder
from shelver.encoders.onnx import OnnxEncoder
from shelver.errors import ModelDirError
from shelver.export import INT8, ExportCheck, ExportError, _require, export_onnx, input_names
from shelver.model_dir import load_model
from shelver.pipeline import STAGES, RunContext, load_bootstrap_config


def test_onnx_path_predicts_like_pytorch(onnx_model_dir, tiny_frames):
    texts = [*tiny_frames["test"]["text"].tolist(), "", "👟", "x" * 400]
    torch_model = load_model(onnx_model_dir)
    onnx_model = load_model(onnx_model_dir, encoder="onnx")
    assert isinstance(onnx_model.encoder_, OnnxEncoder)
    agreement = np.mean((torch_model.predict(texts) == onnx_model.predict(texts)).all(axis=1))
    assert agreement >= 0.995
    cosine = (torch_model.embed(texts) * onnx_model.embed(texts)).sum(axis=1)
    # int8 weights: ~0.99 on queries, 0.97 on texts with nothing to pool ("", or one [UNK])
    assert cosine.mean() > 0.985 and cosine.min() > 0.95
    np.testing.assert_allclose(np.linalg.norm(onnx_model.embed(texts), axis=1), 1.0, atol=1e-4)


def test_export_is_recorded_and_hashed(onnx_model_dir, tmp_path):
    manifest = json.loads((onnx_model_dir / "manifest.json").read_text())
    export = manifest["exports"]["onnx"]
    assert export["quantization"] == INT8 == "int8, per-token activations, per-channel weights"
    assert export["check"]["agreement"] >= export["check"]["min_agreement"] == 0.995
    assert {"onnx/model.onnx", "onnx/tokenizer.json", "onnx/encoder.json"} <= set(manifest["files"])
    config = json.loads((onnx_model_dir / "onnx" / "encoder.json").read_text())
    assert config["max_seq_length"] == 32 and config["pooling"] == "mean" and config["dim"] == 384
    tampered = Path(shutil.copytree(onnx_model_dir, tmp_path / "tampered"))
    with open(tampered / "onnx" / "model.onnx", "ab") as file:
        file.write(b"\0")
    with pytest.raises(ModelDirError, match=r"onnx/model.onnx was modified after the model was saved"):
        load_model(tampered, encoder="serving")


def test_serving_load_imports_no_torch(onnx_model_dir, serving_process):
    out = serving_process(
        onnx_model_dir,
        "m.predict(['red sneakers'])[0].tolist()",
        ("torch", "sentence_transformers", "transformers"),
    )
    assert out == ["['Shoes', 'Sneakers']", "[]"]


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


# ---- a lexical model (the demo's configuration) on a 2-layer random BERT: exports in seconds ----
@pytest.fixture(scope="module")
def lexical_model_dir(tmp_path_factory, taxonomy, tiny_xy, tiny_encoder_dir) -> Path:
    from shelver import HierarchicalClassifier

    texts, y = tiny_xy
    model = HierarchicalClassifier(
        taxonomy=taxonomy, encoder=str(tiny_encoder_dir), head="flat", lexical=True
    )
    return model.fit(texts, y).save(tmp_path_factory.mktemp("models") / "lexical")


@pytest.fixture(scope="module")
def lexical_fp32_dir(lexical_model_dir, tmp_path_factory, tiny_frames) -> Path:
    copy = Path(shutil.copytree(lexical_model_dir, tmp_path_factory.mktemp("fp32") / "m"))
    export_onnx(copy, tiny_frames["valid"]["text"].tolist(), quantize=False, progress=False)
    return copy


def test_a_lexical_model_is_checked_through_its_lexical_features(lexical_fp32_dir, tiny_frames):
    texts = tiny_frames["test"]["text"].tolist()
    torch_model, onnx_model = load_model(lexical_fp32_dir), load_model(lexical_fp32_dir, encoder="onnx")
    assert torch_model.lexical_ is not None and isinstance(onnx_model.encoder_, OnnxEncoder)
    np.testing.assert_array_equal(onnx_model.predict(texts), torch_model.predict(texts))
    check = json.loads((lexical_fp32_dir / "manifest.json").read_text())["exports"]["onnx"]["check"]
    assert check["agreement"] == 1.0 and check["n"] == len(tiny_frames["valid"])


def test_fp32_embeddings_match_pytorch(lexical_fp32_dir, tiny_frames):
    texts = [*tiny_frames["test"]["text"].tolist(), "", "👟", "x" * 400]
    torch_model, onnx_model = load_model(lexical_fp32_dir), load_model(lexical_fp32_dir, encoder="onnx")
    cosine = (torch_model.embed(texts) * onnx_model.embed(texts)).sum(axis=1)
    assert cosine.min() > 0.99
    assert onnx_model.encoder_.config["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]


def test_graph_inputs_follow_the_wrappers_order_not_the_tokenizers():
    assert input_names(["input_ids", "token_type_ids", "attention_mask"]) == [
        "input_ids", "attention_mask", "token_type_ids",
    ]  # fmt: skip
    assert input_names(["attention_mask", "input_ids"]) == ["input_ids", "attention_mask"]
    with pytest.raises(
        ExportError, match=r"tokenizer gives \['input_ids'\]; export needs input_ids and attention_mask"
    ):
        input_names(["input_ids"])


def test_a_broken_graph_fails_whatever_the_agreement(tmp_path):
    check = ExportCheck(500, 1.0, 0.4123, 0.0)
    with pytest.raises(
        ExportError,
        match=r"match PyTorch on 100\.00% of 500 texts \(embedding cosine mean 0\.4123, min 0\.0000\): "
        r"the mean embedding cosine is below 0\.95.*whatever the agreement; .*onnx was not written",
    ):
        _require(check, 0.995, tmp_path)


def _int8_disagrees(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check, with every int8 graph forced to agree with PyTorch on half the texts."""
    real = export.check_export

    def check(model, encoder, texts):
        result = real(model, encoder, texts)
        if encoder.config["quantization"] != INT8:
            return result
        example = {"text": texts[0], "pytorch": "Shoes > Boots", "onnx": "Bags > Totes"}
        return dataclasses.replace(result, agreement=0.5, disagreements=[example])

    monkeypatch.setattr(export, "check_export", check)


def test_failed_int8_falls_back_to_fp32_when_asked(lexical_model_dir, tmp_path, tiny_frames, monkeypatch):
    _int8_disagrees(monkeypatch)
    copy = Path(shutil.copytree(lexical_model_dir, tmp_path / "m"))
    texts = tiny_frames["valid"]["text"].tolist()
    with pytest.raises(ExportError, match=r"match PyTorch on 50\.00% .*below the required 99\.50%"):
        export_onnx(copy, texts, progress=False)  # the CLI's default: fail
    assert not (copy / "onnx").exists()
    result = export_onnx(copy, texts, progress=False, fallback_fp32=True)
    assert result.quantization == "none (fp32)" and result.check.agreement == 1.0
    assert result.int8_refused is not None and result.int8_refused.agreement == 0.5
    record = json.loads((copy / "manifest.json").read_text())["exports"]["onnx"]
    assert record["quantization"] == "none (fp32)" and record["int8_refused"]["agreement"] == 0.5
    assert "below the required 99.50%" in record["int8_refused"]["reason"]
    assert sorted(p.name for p in (copy / "onnx").iterdir()) == [
        "encoder.json",
        "model.onnx",
        "tokenizer.json",
    ]
    assert load_model(copy, encoder="onnx").encoder_.config["quantization"] == "none (fp32)"


def test_bootstrap_export_stage_records_the_refused_int8(
    lexical_model_dir, tmp_path, tiny_files, tiny_frames, tiny_encoder_dir, monkeypatch
):
    _int8_disagrees(monkeypatch)
    out = tmp_path / "run"
    shutil.copytree(lexical_model_dir, out / "train" / "model")
    (out / "select").mkdir()
    tiny_frames["valid"].to_csv(out / "select" / "valid.csv", index=False)
    config = load_bootstrap_config(None, (f"train.encoder.name={tiny_encoder_dir}",))
    ctx = RunContext(tiny_files["taxonomy"], tiny_files["test"], out, config, progress=False)
    summary = STAGES["export"].run(ctx, out / "export")
    assert summary["onnx"] == "none (fp32)"
    assert summary["int8_refused"].startswith("ONNX predictions match PyTorch on 50.00%")
    assert (out / "export" / "model" / "onnx" / "model.onnx").is_file()


def test_a_lost_export_is_named_and_exporting_again_repairs_it(onnx_model_dir, tmp_path, tiny_frames):
    copy = tmp_path / "m"
    shutil.copytree(onnx_model_dir, copy)
    (copy / "onnx" / "encoder.json").unlink()
    with pytest.raises(ModelDirError, match="onnx/encoder.json is missing; export the model again"):
        load_model(copy, encoder="serving")
    export_onnx(copy, tiny_frames["valid"]["text"].tolist(), progress=False)  # the saved encoder loads
    served, saved = load_model(copy, encoder="serving"), load_model(onnx_model_dir, encoder="serving")
    texts = tiny_frames["valid"]["text"].tolist()[:20]
    assert [p.path for p in served.classify(texts)] == [p.path for p in saved.classify(texts)]


def test_the_check_says_when_it_was_measured_on_title_like_texts():
    titles = ExportCheck(2000, 0.998, 0.99, 0.97, median_words=7.0).describe()
    queries = ExportCheck(2000, 0.95, 0.99, 0.97, median_words=2.0).describe()
    assert "median of 7 words: if they are product titles, short queries agree less" in titles
    assert "median" not in queries and queries.startswith("ONNX predictions match PyTorch on 95.00%")
