"""Invariants of the estimator, for every head, on the tiny taxonomy with the hashing encoder."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.base import clone, is_classifier

from shelver import HierarchicalClassifier, load_model
from shelver.errors import ConfigError, DataError, NotFittedError

HEADS = ["flat", "masked", "per_group"]


@pytest.fixture(scope="module", params=HEADS)
def fitted(request, taxonomy, tiny_xy) -> HierarchicalClassifier:
    texts, y = tiny_xy
    return HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", head=request.param).fit(texts, y)


def test_every_prediction_is_a_path_of_the_taxonomy(fitted, taxonomy, tiny_frames):
    predicted = fitted.predict(tiny_frames["test"]["text"].tolist())
    assert predicted.shape == (len(tiny_frames["test"]), 2)
    assert all(tuple(row) in taxonomy for row in predicted)


def test_subcategory_is_child_of_category(fitted, taxonomy, tiny_frames):
    for p in fitted.classify(tiny_frames["test"]["text"].tolist() + ["", "???", "zzz qqq"]):
        assert p.path[1] in taxonomy.children((p.path[0],))
        assert 0.0 <= p.confidence[1] <= p.confidence[0] + 1e-6 <= 1.0 + 1e-6


def test_probabilities_per_level_sum_to_one(fitted, tiny_frames):
    P1, P2 = fitted.predict_proba(tiny_frames["test"]["text"].tolist())
    np.testing.assert_allclose(P1.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(P2.sum(axis=1), 1.0, atol=1e-5)
    # the category's probability is the sum of its leaves' joint probabilities
    np.testing.assert_allclose(fitted.head_.category_sums(P2), P1, atol=1e-5)


def test_learns_the_tiny_task(fitted, tiny_frames):
    test = tiny_frames["test"]
    assert fitted.score(test["text"].tolist(), test[["category", "subcategory"]].to_numpy()) >= 0.9


def test_repeated_names_are_told_apart_by_path(fitted):
    predicted = fitted.predict(["red bag strap", "blue cufflinks"])
    assert [tuple(r) for r in predicted] == [("Bags", "Accessories"), ("Tops", "Accessories")]


def test_save_load_gives_identical_predictions(fitted, tiny_frames, tmp_path):
    texts = tiny_frames["test"]["text"].tolist()
    fitted.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    np.testing.assert_array_equal(loaded.predict(texts), fitted.predict(texts))
    np.testing.assert_allclose(loaded.predict_proba(texts)[1], fitted.predict_proba(texts)[1], atol=1e-7)
    assert not list((tmp_path / "model").glob("*.pkl"))


def test_sklearn_contract(taxonomy, tiny_xy):
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", head="flat", C=3.0)
    twin = clone(model)
    assert twin.get_params() == model.get_params()
    assert not [k for k in vars(model) if k.endswith("_")]  # nothing learned before fit
    texts, y = tiny_xy
    assert model.fit(texts, y) is model
    assert not hasattr(model, "X_") and "texts" not in vars(model)  # training data not kept
    fresh = clone(model)  # a fitted model clones to an unfitted one with the same parameters
    assert fresh.get_params() == model.get_params() and not hasattr(fresh, "head_")


def test_estimator_contract_without_sklearn_base(taxonomy):
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", head="flat", C=3.0)
    assert is_classifier(model) and model._estimator_type == "classifier"
    assert list(model.get_params()) == sorted(model.get_params())  # config.json keeps its key order
    assert model.set_params(C=0.5, head="masked") is model and (model.C, model.head) == (0.5, "masked")
    assert clone(model).get_params()["C"] == 0.5
    assert repr(model).startswith("HierarchicalClassifier(C=0.5, ") and "head='masked'" in repr(model)
    with pytest.raises(ConfigError, match=r"invalid parameter 'heads' for HierarchicalClassifier; valid"):
        model.set_params(heads="flat")
    with pytest.raises(ValueError, match="invalid parameter"):  # what sklearn's own set_params raises
        model.set_params(alpha=1.0)


def test_unfitted_and_bad_input_errors(taxonomy, tiny_xy):
    texts, y = tiny_xy
    with pytest.raises(NotFittedError, match="not fitted yet"):
        HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing").predict(["x"])
    with pytest.raises(ConfigError, match="unknown head 'tree'; choose one of flat, masked, per_group"):
        HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", head="tree").fit(texts, y)
    with pytest.raises(ConfigError, match="never inferred"):
        HierarchicalClassifier(encoder="hashing").fit(texts, y)
    bad = y.copy()
    bad[3] = ["Bags", "Sneakers"]
    with pytest.raises(
        DataError, match=r"'Sneakers' is not under category 'Bags'; its parent is 'Shoes' \(row 4 of y\)"
    ):
        HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing").fit(texts, bad)
    with pytest.raises(DataError, match="has 3 texts but y has"):
        HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing").fit(texts[:3], y)


def test_per_group_head_fused_product_equals_one_model_per_group(taxonomy, tiny_xy):
    from shelver.heads import _fill_unseen

    texts, y = tiny_xy
    keep = y[:, 0] != "Tops"  # one category without training rows: its children share its mass
    model = HierarchicalClassifier(
        taxonomy=taxonomy, encoder="hashing", head="per_group", router="categories", lexical=False
    ).fit([t for t, k in zip(texts, keep, strict=True) if k], y[keep])
    head, X = model.head_, model.embed(["red boots", "tote bag", "linen shirt", ""])
    P1, P2 = head.proba(X)
    within = np.zeros((len(X), len(taxonomy)), dtype=np.float32)
    for group in head.groups.values():
        within[:, group.classes] = group.proba(X)
    expected = _fill_unseen(within, head.leaf_category, taxonomy) * P1[:, head.leaf_category]
    np.testing.assert_allclose(P2, expected, atol=1e-6)
    np.testing.assert_allclose(P2.sum(axis=1), 1.0, atol=1e-5)


def test_leaf_sum_router_is_a_distribution_and_round_trips(taxonomy, tiny_xy, tiny_frames, tmp_path):
    texts, y = tiny_xy
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", head="per_group", router="leaves")
    model.fit(texts, y)
    test = tiny_frames["test"]["text"].tolist()
    P1, P2 = model.predict_proba(test)
    np.testing.assert_allclose(P1.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.head_.category_sums(P2), P1, atol=1e-5)
    model.save(tmp_path / "m")
    np.testing.assert_array_equal(load_model(tmp_path / "m").predict(test), model.predict(test))
    with pytest.raises(ConfigError, match="unknown router 'tree'; choose one of categories, leaves"):
        HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", head="per_group", router="tree").fit(
            texts, y
        )
