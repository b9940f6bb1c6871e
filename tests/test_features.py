"""Lexical TF-IDF features: fitted, joined with embeddings, saved without pickle, reloaded exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from shelver import HierarchicalClassifier, load_model
from shelver.errors import ConfigError, DataError, ModelDirError
from shelver.features import BLOCKS, Features, LexicalFeatures, LexicalOptions, SparseRows, _vectorizer
from shelver.heads import softmax

ODD = [
    "",  # empty
    "!!! ??? ...",  # nothing left after tokenisation
    "a b c",  # one-letter words: no word token, char n-grams only
    "Red red RED red shoes shoes",  # repeated words (sublinear tf)
    "Ünïcode ÇAFÉ straße İstanbul ǅemal",  # lower() that changes length and accents
    "日本語のテキスト 한국어",  # no spaces between CJK characters
    "  tabs\tand\nnewlines   and\u00a0nbsp  ",  # every kind of white space
    "snake_case t-shirt 3-pack 100% cotton (x2)",  # \w includes _ and digits
    "nike " * 200,  # long text
]

HEADS = ["flat", "masked", "per_group"]


@pytest.fixture(scope="module", params=HEADS)
def lexical_model(request, taxonomy, tiny_xy) -> HierarchicalClassifier:
    texts, y = tiny_xy
    return HierarchicalClassifier(
        taxonomy=taxonomy,
        encoder="hashing:64",
        head=request.param,
        router="categories",
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
    assert isinstance(features, Features) and isinstance(features.lexical, SparseRows)
    assert features.shape == (len(tiny_frames["test"]), 64 + lexical_model.lexical_.n_features)


def sklearn_rows(lexical: LexicalFeatures, texts: list[str]) -> sp.csr_matrix:
    """What the lexical block was before: scikit-learn's vectorizers on the saved vocabulary."""
    blocks = []
    for block in BLOCKS:
        vocabulary = {term: i for i, term in enumerate(lexical.vocabularies[block])}
        vectorizer = _vectorizer(lexical.options, block, vocabulary=vocabulary)
        vectorizer.idf_ = lexical.idf[block]
        blocks.append(vectorizer.transform(texts))
    return (sp.hstack(blocks, format="csr") * lexical.options.weight).astype(np.float32)


@pytest.mark.parametrize("weight", [1.0, 0.5])
def test_rows_equal_scikit_learn_on_odd_inputs(tiny_xy, weight):
    texts, _ = tiny_xy
    options = LexicalOptions(min_df=1, word_ngrams=(1, 3), char_ngrams=(1, 4), weight=weight)
    lexical = LexicalFeatures(options).fit([*texts, *ODD[3:]])  # the odd texts' terms are known
    probe = [*ODD, *texts[:10], "unseen words entirely"]
    ours, theirs = lexical.transform(probe), sklearn_rows(lexical, probe)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours.toarray(), theirs.toarray(), rtol=1e-6, atol=1e-7)
    n_words = len(lexical.vocabularies["word"])
    assert ours[0].nnz == 0 and ours[1:].getnnz(axis=1).min() > 0  # only the empty text has no terms
    assert ours[1:3, :n_words].nnz == 0  # punctuation and one-letter words: no word token


def test_sparse_rows_product_equals_scipy_with_empty_rows():
    rng = np.random.default_rng(0)
    keep = np.ones(700, np.float32)
    keep[::7] = 0  # empty rows, also at the start and inside a step
    dense = sp.diags(keep) @ sp.random(700, 50, density=0.05, format="csr", random_state=0, dtype=np.float32)
    dense = sp.csr_matrix(dense)
    dense.eliminate_zeros()
    rows = SparseRows(dense.indptr.astype(np.int64), dense.indices, dense.data, 50)
    weights = rng.normal(size=(50, 6)).astype(np.float32)
    np.testing.assert_allclose(rows @ weights, dense @ weights, rtol=1e-5, atol=1e-6)
    one = SparseRows(dense[:1].indptr.astype(np.int64), dense[:1].indices, dense[:1].data, 50)
    np.testing.assert_array_equal(one @ weights, np.zeros((1, 6), np.float32))
    with pytest.raises(DataError, match="the lexical block has 50 columns but the weights have 49 rows"):
        rows @ weights[:49]


def test_head_probabilities_equal_the_joined_sparse_product(lexical_model, tiny_frames):
    """Blocks multiplied apart, weights stored transposed: the same probabilities as before."""
    texts = [*tiny_frames["test"]["text"].tolist(), *ODD]
    before = sp.hstack(
        [sp.csr_matrix(lexical_model.embed(texts)), sklearn_rows(lexical_model.lexical_, texts)], format="csr"
    )
    head = lexical_model.head_
    for now, then in zip(head.proba(lexical_model.features(texts)), head.proba(before), strict=True):
        np.testing.assert_allclose(now, then, atol=1e-6)
    if head.name == "flat":  # and against the formula itself, coefficients as scikit-learn lays them out
        model = head.leaf_model
        expected = softmax(np.asarray(before @ model.coef.T) + model.intercept)
        np.testing.assert_allclose(head.proba(lexical_model.features(texts))[1], expected, atol=1e-6)
    for text in texts[:5]:  # one text at a time (the request path) agrees with the batch
        np.testing.assert_allclose(
            lexical_model.predict_proba([text])[1],
            lexical_model.predict_proba(texts)[1][[texts.index(text)]],
            atol=1e-6,
        )


def test_weights_are_stored_for_a_copy_free_product(lexical_model):
    head = lexical_model.head_
    models = [head.leaf_model] if head.name == "flat" else [head.router]
    for model in models:
        assert model.weights.flags.c_contiguous and model.weights.dtype == np.float32
        assert model.weights.shape == (64 + lexical_model.lexical_.n_features, len(model.classes))


def test_serving_a_lexical_model_imports_no_sklearn_pandas_or_torch(lexical_model, tmp_path, serving_process):
    lexical_model.save(tmp_path / "m")
    out = serving_process(
        tmp_path / "m", "m.classify(['red sneakers', ''])[0].path", ("sklearn", "pandas", "torch", "scipy")
    )
    assert out == ["('Shoes', 'Sneakers')", "[]"]


def test_lexical_features_help_where_the_encoder_is_weak(taxonomy, tiny_xy, tiny_frames):
    texts, y = tiny_xy
    test = tiny_frames["test"]
    truth = test[["category", "subcategory"]].to_numpy()
    weak = dict(taxonomy=taxonomy, encoder="hashing:8", head="flat", lexical=False)
    plain = HierarchicalClassifier(**weak).fit(texts, y).score(test["text"].tolist(), truth)
    joined = (
        HierarchicalClassifier(**{**weak, "lexical": True}).fit(texts, y).score(test["text"].tolist(), truth)
    )
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
