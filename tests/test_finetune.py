"""Fine-tuning a tiny real transformer: the encoder changes, its head is discarded, runs resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from shelver import HierarchicalClassifier, load_model
from shelver.config import EncoderConfig
from shelver.data import LabeledData
from shelver.errors import ConfigError

pytestmark = pytest.mark.integration

PROBE = ["red sneaker", "laptop backpack", "linen shirt", "tube top", "ankle boot"]


def as_data(frame) -> LabeledData:
    y = frame[["category", "subcategory"]].to_numpy().astype(str)
    return LabeledData(frame["text"].tolist(), y, ["human"] * len(frame), "tiny")


def tiny_config(encoder_dir: Path, **changes) -> EncoderConfig:
    values = dict(name=str(encoder_dir), max_steps=3, train_batch_size=16, learning_rate=1e-3, eval_steps=2)
    return EncoderConfig(**{**values, **changes})


def embed(path: Path | str) -> np.ndarray:
    from shelver.encoders import make_encoder

    return make_encoder(str(path)).encode(PROBE)


@pytest.fixture(scope="module")
def classification_run(tmp_path_factory, tiny_encoder_dir, taxonomy, tiny_frames):
    from shelver.finetune import finetune_encoder

    out = tmp_path_factory.mktemp("ft") / "encoder"
    train, valid = as_data(tiny_frames["train"]), as_data(tiny_frames["valid"])
    config = tiny_config(tiny_encoder_dir, max_steps=4)
    return finetune_encoder(config, taxonomy, train, out, valid=valid, progress=False)


def test_finetuning_changes_the_embeddings_and_stays_loadable(classification_run, tiny_encoder_dir):
    before, after = embed(tiny_encoder_dir), embed(classification_run.encoder_dir)
    assert after.shape == before.shape
    assert not np.allclose(before, after, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(after, axis=1), 1.0, atol=1e-5)
    assert classification_run.steps == 4


def test_the_training_head_is_not_in_the_saved_encoder(classification_run, taxonomy):
    from safetensors import safe_open

    out = classification_run.encoder_dir
    for file in out.rglob("*.safetensors"):
        with safe_open(str(file), "np") as weights:
            names = list(weights.keys())
            assert not [k for k in names if "classifier" in k]
            assert all(weights.get_slice(k).get_shape()[0] != len(taxonomy) for k in names)
    assert not list(out.rglob("classification_head*")) and not list(out.rglob("*.pkl"))
    assert not out.with_name("encoder.checkpoints").exists()  # removed once the encoder is saved
    assert json.loads((out / "shelver_finetune.json").read_text())["config"]["objective"] == "classification"


def test_heads_train_on_the_finetuned_encoder(classification_run, taxonomy, tiny_xy, tmp_path):
    texts, y = tiny_xy
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder=str(classification_run.encoder_dir)).fit(
        texts, y
    )
    model.save(tmp_path / "m")
    assert (tmp_path / "m" / "encoder" / "model.safetensors").is_file()
    np.testing.assert_array_equal(load_model(tmp_path / "m").predict(PROBE), model.predict(PROBE))


def test_end_to_end_model_saves_and_loads_without_pickle(classification_run, taxonomy, tiny_frames, tmp_path):
    from shelver.finetune import end_to_end_model

    config = tiny_config(Path(classification_run.encoder_dir))
    model = end_to_end_model(classification_run, taxonomy, as_data(tiny_frames["train"]), config)
    model.save(tmp_path / "e2e")
    assert not list((tmp_path / "e2e").rglob("*.pkl")) and not list((tmp_path / "e2e").rglob("*.bin"))
    loaded = load_model(tmp_path / "e2e")
    for a, b in zip(model.predict_proba(PROBE), loaded.predict_proba(PROBE), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    # it predicts with the fine-tuned head: cosine logits scaled by 20, not a refitted regression
    weights = loaded.head_.leaf_model.coef
    np.testing.assert_allclose(np.linalg.norm(weights, axis=1), 20.0, rtol=1e-4)


def test_contrastive_objective_changes_embeddings_and_has_no_head(
    tmp_path, tiny_encoder_dir, taxonomy, tiny_frames
):
    from shelver.finetune import end_to_end_model, finetune_encoder

    config = tiny_config(tiny_encoder_dir, objective="contrastive")
    result = finetune_encoder(
        config, taxonomy, as_data(tiny_frames["train"]), tmp_path / "enc", progress=False
    )
    assert result.head is None and not np.allclose(
        embed(tiny_encoder_dir), embed(result.encoder_dir), atol=1e-4
    )
    with pytest.raises(ConfigError, match=r"has no classification head; fine-tune with encoder\.objective"):
        end_to_end_model(result, taxonomy, as_data(tiny_frames["train"]), config)


def test_hard_negatives_come_from_sibling_subcategories(taxonomy, tiny_frames):
    from shelver.finetune import _leaf_indices, _triples

    data = as_data(tiny_frames["train"])
    leaves = _leaf_indices(data, taxonomy)
    triples = _triples(data.texts, leaves, taxonomy, np.random.default_rng(0), hard_negatives=True)
    leaf_of = dict(zip(data.texts, leaves, strict=True))
    category = np.asarray(taxonomy.leaf_category)
    assert len(triples["anchor"]) == len(data.texts)
    for anchor, positive, negative in zip(
        triples["anchor"], triples["positive"], triples["negative"], strict=True
    ):
        assert leaf_of[positive] == leaf_of[anchor]
        assert (
            leaf_of[negative] != leaf_of[anchor] and category[leaf_of[negative]] == category[leaf_of[anchor]]
        )


def test_same_seed_same_encoder(tmp_path, tiny_encoder_dir, taxonomy, tiny_frames):
    from shelver.finetune import finetune_encoder

    config, train = tiny_config(tiny_encoder_dir, max_steps=2), as_data(tiny_frames["train"])
    first = finetune_encoder(config, taxonomy, train, tmp_path / "a", progress=False)
    second = finetune_encoder(config, taxonomy, train, tmp_path / "b", progress=False)
    np.testing.assert_array_equal(embed(first.encoder_dir), embed(second.encoder_dir))


def test_an_interrupted_run_resumes_from_its_checkpoint(
    tmp_path, tiny_encoder_dir, taxonomy, tiny_frames, monkeypatch
):
    import shutil

    from sentence_transformers import SentenceTransformerTrainer

    import shelver.finetune as ft

    config, train = tiny_config(tiny_encoder_dir, max_steps=4), as_data(tiny_frames["train"])
    real_save, real_train = ft._save, SentenceTransformerTrainer.train
    monkeypatch.setattr(ft, "_save", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        ft.finetune_encoder(config, taxonomy, train, tmp_path / "enc", progress=False)
    checkpoints = tmp_path / "enc.checkpoints"
    assert (checkpoints / "checkpoint-2" / ft.HEAD_FILE).is_file()
    shutil.rmtree(checkpoints / "checkpoint-4")  # as if killed between steps 2 and 4
    with pytest.raises(ConfigError, match="checkpoints of a run with other settings; delete it"):
        ft.finetune_encoder(tiny_config(tiny_encoder_dir, max_steps=5), taxonomy, train, tmp_path / "enc")
    resumed_from = []

    def spy(self, resume_from_checkpoint=None, **kwargs):
        resumed_from.append(resume_from_checkpoint)
        return real_train(self, resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(ft, "_save", real_save)
    monkeypatch.setattr(SentenceTransformerTrainer, "train", spy)
    result = ft.finetune_encoder(config, taxonomy, train, tmp_path / "enc", progress=False)
    assert resumed_from == [str(checkpoints / "checkpoint-2")] and result.steps == 4
    assert not checkpoints.exists()


def test_bad_objective_and_hashing_encoder_are_refused(tmp_path, taxonomy, tiny_frames):
    from shelver.finetune import finetune_encoder

    train = as_data(tiny_frames["train"])
    with pytest.raises(
        ConfigError, match=r"unknown fine-tuning objective 'triplets'; choose one of classification"
    ):
        finetune_encoder(EncoderConfig(objective="triplets"), taxonomy, train, tmp_path / "x")
    with pytest.raises(ConfigError, match="the hashing encoder has no weights to fine-tune"):
        finetune_encoder(EncoderConfig(name="hashing"), taxonomy, train, tmp_path / "x")


def test_cli_finetune_and_train_with_finetuning(tmp_path, tiny_encoder_dir, tiny_files):
    from shelver.cli import main

    common = ["--taxonomy", str(tiny_files["taxonomy"]), "--train", str(tiny_files["train"]), "--quiet"]
    sets = ["--set", f"encoder.name={json.dumps(str(tiny_encoder_dir))}", "--set", "encoder.max_steps=2"]
    result = CliRunner().invoke(
        main,
        ["finetune", *common, *sets, "--out", str(tmp_path / "enc"), "--end-to-end", str(tmp_path / "e2e")],
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "enc" / "modules.json").is_file() and (tmp_path / "e2e" / "manifest.json").is_file()
    result = CliRunner().invoke(
        main,
        [
            "train",
            *common,
            *sets,
            "--set",
            "encoder.finetune=true",
            "--set",
            "lexical.enabled=true",
            "--out",
            str(tmp_path / "model"),
        ],
    )
    assert result.exit_code == 0, result.output
    model = load_model(tmp_path / "model")
    assert (tmp_path / "model" / "encoder" / "modules.json").is_file() and model.lexical_ is not None
    assert model.predict(PROBE).shape == (len(PROBE), 2)


def test_cli_end_to_end_needs_the_classification_objective(tmp_path, tiny_files):
    from shelver.cli import main

    args = [
        "finetune",
        "--taxonomy",
        str(tiny_files["taxonomy"]),
        "--train",
        str(tiny_files["train"]),
        "--out",
        str(tmp_path / "e"),
        "--end-to-end",
        str(tmp_path / "m"),
        "--set",
        "encoder.objective=contrastive",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "--end-to-end needs encoder.objective=classification" in result.output
