"""Lexical TF-IDF features: fitted, joined with embeddings, saved without pickle, reloaded exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from shelver import HierarchicalClassifier, load_model
from shelver.errors import ConfigError, ModelDirError
from shelver.features import LexicalFeatures, LexicalOptions

HEADS = ["flat", "masked", "per_group"]


@pytest.fixture(scope="module", params=HEADS)
def lexical_model(request, taxonomy, tiny_xy) -> HierarchicalClassifier:
    texts, y = tiny_xy
    return HierarchicalClassifier(
        taxonomy=taxonomy,
        encoder="hashing:64",
        head=request.param,
        lexical=True,
        lexical_options={"max_word_features": 50, "max_char_features": 200},
    ).fit(texts, y)


def test_features_are_capped_sparse_unit_blocks(tiny_xy):
    texts, _ = tiny_xy
    options = LexicalOptions(max_word_features=10, max_char_features=30, min_df=1)
    features = LexicalFeatures(options).fit(texts)
    X = features.transform(texts)
    assert sp.issparse(X) and X.shape == (len(texts), features.n_features) and features.n_features == 40
    words, chars = X[:, :10].toarray(), X[:, 10:].toarray()
    np.testing.assert_allclose(np.linalg.norm(chars, axis=1), 1.0, atol=1e-5)  # every text has char n-grams
    assert np.all(np.linalg.norm(words, axis=1) <= 1.0 + 1e-5)


def test_features_round_trip_through_json_and_arrays(tiny_xy, tmp_path):
    texts, _ = tiny_xy
    fitted = LexicalFeatures(LexicalOptions(max_word_features=40)).fit(texts)
    fitted.save(tmp_path)
    json.loads((tmp_path / "lexical.json").read_text())  # plain JSON, no pickle anywhere
    loaded = LexicalFeatures.load(tmp_path)
    probe = [*texts[:20], "unseen words entirely", "RED Sneaker!!"]
    assert (fitted.transform(probe) != loaded.transform(probe)).nnz == 0


def test_lexical_model_saves_and_loads_with_identical_predictions(lexical_model, tiny_frames, tmp_path):
    texts = tiny_frames["test"]["text"].tolist()
    lexical_model.save(tmp_path / "m")
    assert {"lexical.json", "lexical.safetensors"} <= {p.name for p in (tmp_path / "m").iterdir()}
    assert not list((tmp_path / "m").glob("*.pkl"))
    loaded = load_model(tmp_path / "m")
    assert loaded.lexical_ is not None
    for a, b in zip(lexical_model.predict_proba(texts), loaded.predict_proba(texts), strict=True):
        np.testing.assert_array_equal(a, b)


def test_heads_see_embedding_and_lexical_block(lexical_model, tiny_frames):
    features = lexical_model.features(tiny_frames["test"]["text"].tolist())
    assert sp.issparse(features) and features.shape[1] == 64 + lexical_model.lexical_.n_features


def test_lexical_features_help_where_the_encoder_is_weak(taxonomy, tiny_xy, tiny_frames):
    texts, y = tiny_xy
    test = tiny_frames["test"]
    truth = test[["category", "subcategory"]].to_numpy()
    weak = dict(taxonomy=taxonomy, encoder="hashing:8", head="flat")
    plain = HierarchicalClassifier(**weak).fit(texts, y).score(test["text"].tolist(), truth)
    joined = HierarchicalClassifier(**weak, lexical=True).fit(texts, y).score(test["text"].tolist(), truth)
    assert joined > plain


def test_missing_lexical_files_are_refused(lexical_model, tmp_path):
    lexical_model.save(tmp_path / "m")
    (tmp_path / "m" / "lexical.json").unlink()
    with pytest.raises(ModelDirError, match=r"lexical.json is missing"):
        load_model(tmp_path / "m")


def test_unknown_lexical_option_names_the_valid_ones(taxonomy, tiny_xy):
    texts, y = tiny_xy
    model = HierarchicalClassifier(
        taxonomy=taxonomy, encoder="hashing", lexical=True, lexical_options={"vocab": 3}
    )
    with pytest.raises(ConfigError, match=r"unknown lexical option 'vocab'; valid options: char_ngrams"):
        model.fit(texts, y)
