"""The static encoder: distilled from a real (tiny) sentence-transformers model, saved inside a
model directory, and served without torch."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from shelver import HierarchicalClassifier
from shelver.encoders import make_encoder
from shelver.encoders.static import EMBEDDINGS_FILE, StaticEncoder, distill
from shelver.errors import ModelDirError
from shelver.model_dir import load_model


@pytest.fixture(scope="module")
def static_dir(tiny_encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("static") / "tiny"
    distill(str(tiny_encoder_dir), out, progress=False)
    return out


def test_a_one_token_text_gets_what_the_model_gives_that_token_alone(static_dir, tiny_encoder_dir):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_encoder_dir), device="cpu")
    words = ["shoe", "red", "cheese"]
    assert all(len(model.tokenizer.tokenize(w)) == 1 for w in words)
    expected = model.encode(words, normalize_embeddings=True)
    # the table is stored as float16: equal to ~3 decimals
    np.testing.assert_allclose(StaticEncoder(static_dir).encode(words), expected, atol=2e-3)


def test_a_text_is_the_normalised_mean_of_its_token_rows(static_dir):
    encoder = StaticEncoder(static_dir)
    ids = encoder._tokenizer.encode("red running shoes", add_special_tokens=False).ids
    assert len(ids) > 1
    mean = encoder.vectors[ids].astype(np.float32).mean(axis=0)  # rows are stored in float16
    np.testing.assert_allclose(
        encoder.encode(["red running shoes"])[0], mean / np.linalg.norm(mean), atol=1e-6
    )


def test_the_one_text_path_equals_the_batch_path(static_dir):
    encoder = make_encoder(f"static:{static_dir}")
    texts = ["red sneakers", "", "a", "Ünïcode ÇAFÉ straße", "word " * 300, "\ud800 lone surrogate", "🙂"]
    batch = encoder.encode(texts)
    for i, text in enumerate(texts):
        np.testing.assert_allclose(encoder.encode([text])[0], batch[i], atol=1e-6)
    norms = np.linalg.norm(batch, axis=1)
    assert norms[1] == 0.0  # an empty text has no tokens: a zero vector, not NaN
    np.testing.assert_allclose(norms[[0, 2, 3, 4, 5]], 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_special_tokens_have_no_row(static_dir, tiny_encoder_dir):
    from transformers import AutoTokenizer

    special = AutoTokenizer.from_pretrained(str(tiny_encoder_dir)).all_special_ids
    assert not np.abs(np.load(static_dir / EMBEDDINGS_FILE)[special]).any()


def test_a_model_carries_its_static_encoder_and_serves_without_torch(
    static_dir, taxonomy, tiny_xy, tmp_path, serving_process
):
    texts, y = tiny_xy
    source = shutil.copytree(static_dir, tmp_path / "elsewhere")
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder=f"static:{source}").fit(texts, y)
    root = model.save(tmp_path / "model")
    shutil.rmtree(source)  # the model no longer needs the directory it was trained with
    assert (root / "encoder" / EMBEDDINGS_FILE).is_file()
    loaded = load_model(root, encoder="serving")
    assert loaded.encoder_.spec == f"static:{root / 'encoder'}"
    np.testing.assert_array_equal(loaded.predict(texts[:20]), model.predict(texts[:20]))
    printed, imported = serving_process(
        root, "m.predict(['red shoes']).tolist()", ("torch", "sentence_transformers")
    )
    assert printed == str(model.predict(["red shoes"]).tolist()) and imported == "[]"


def test_a_missing_file_names_the_command_that_makes_one(static_dir, tmp_path):
    broken = shutil.copytree(static_dir, tmp_path / "broken")
    (broken / EMBEDDINGS_FILE).unlink()
    with pytest.raises(ModelDirError, match="embeddings.npy missing.*shelver distill"):
        make_encoder(f"static:{broken}")


def test_the_distill_command(tiny_encoder_dir, tmp_path):
    from shelver.cli import main

    result = CliRunner().invoke(
        main, ["distill", "--encoder", str(tiny_encoder_dir), "--out", str(tmp_path / "s")]
    )
    assert result.exit_code == 0, result.output
    assert f"encoder.name=static:{tmp_path / 's'}" in result.output
    assert StaticEncoder(tmp_path / "s").dim == 32
