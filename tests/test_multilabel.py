"""Multi-label training and prediction, ' | ' path cells, and the gendered fashion view."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from shelver import HierarchicalClassifier, load_model
from shelver.data import merge_multi_label, read_labeled
from shelver.errors import DataError
from shelver.metrics import example_f1, subset_accuracy
from shelver.views import fashion_gender_view, strip_gender

# texts that belong to two paths (different categories, and the same category)
SHARED = {
    "gift set": [("Bags", "Accessories"), ("Tops", "Accessories")],
    "trail runner": [("Shoes", "Sneakers"), ("Shoes", "Boots")],
}
COLOURS = ["red", "blue", "black", "white", "green", "brown", "grey", "pink", "navy", "beige"]


def multi_rows(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The tiny single-label rows plus texts carrying two labels (one row per label)."""
    rng = random.Random(seed)
    extra = []
    for words, paths in SHARED.items():
        for colour in rng.sample(COLOURS, 8):
            extra += [{"text": f"{colour} {words}", "category": c, "subcategory": s} for c, s in paths]
    return pd.concat([frame, pd.DataFrame(extra)], ignore_index=True)


@pytest.fixture(scope="module")
def multi(taxonomy, tiny_frames):
    frames = {split: multi_rows(tiny_frames[split], i) for i, split in enumerate(("train", "valid", "test"))}
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", multi_label=True)
    train, valid = frames["train"], frames["valid"]
    model.fit(train["text"].tolist(), train[["category", "subcategory"]].to_numpy())
    return model.calibrate(valid["text"].tolist(), valid[["category", "subcategory"]].to_numpy()), frames


def test_multi_label_model_returns_every_label_above_threshold(multi):
    model, frames = multi
    texts = [*frames["test"]["text"].tolist(), "blue", "zzz"]
    s, t = model.scores(texts), model.thresholds_
    paths, names = model.taxonomy_.paths, model.taxonomy_.categories
    for i, p in enumerate(model.classify(texts)):
        above = {paths[j] for j in np.flatnonzero(s.P2[i] >= t.per_leaf)}
        above |= {paths[s.leaves[i]]} if s.conf2[i] >= t.level2 else set()  # the arg-max, as single-label
        categories = {(names[j], "") for j in np.flatnonzero(s.P1[i] >= t.per_category)}
        categories |= {(names[s.categories[i]], "")} if s.conf1[i] >= t.level1 else set()
        expected = above or categories
        assert set(p.paths) == expected
        assert p.decision == ("full" if above else "category" if categories else "abstain")
        if p.paths:
            assert p.path == p.paths[0]  # the most confident answer first


def test_multi_label_model_finds_both_paths_of_shared_texts(multi):
    model, _ = multi
    answers = {p.text: set(p.paths) for p in model.classify(["green gift set", "navy trail runner"])}
    assert answers["green gift set"] == {("Bags", "Accessories"), ("Tops", "Accessories")}
    assert answers["navy trail runner"] == {("Shoes", "Sneakers"), ("Shoes", "Boots")}
    assert model.predict_paths(["red boots"]) == [[("Shoes", "Boots")]]


def test_multi_label_save_load_keeps_per_class_thresholds(multi, tmp_path):
    model, frames = multi
    texts = frames["test"]["text"].tolist()
    model.save(tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.multi_label_
    np.testing.assert_array_equal(loaded.thresholds_.per_leaf, model.thresholds_.per_leaf)
    np.testing.assert_array_equal(loaded.thresholds_.per_category, model.thresholds_.per_category)
    assert [p.to_dict() for p in loaded.classify(texts)] == [p.to_dict() for p in model.classify(texts)]


def test_merge_multi_label_collapses_repeats_and_keeps_distinct_paths():
    texts = ["a", "a", "a", "b"]
    y = np.array([["X", "x"], ["Y", "y"], ["X", "x"], ["X", "x"]])
    merged_texts, merged_y = merge_multi_label(texts, y)
    assert merged_texts == ["a", "a", "b"]
    assert merged_y.tolist() == [["X", "x"], ["Y", "y"], ["X", "x"]]


def test_path_cells_with_several_paths_become_rows(tmp_path, taxonomy):
    file = tmp_path / "multi.csv"
    file.write_text('text,path\ngift set,"Bags > Accessories | Tops > Accessories"\nboots,Shoes > Boots\n')
    data = read_labeled(file, taxonomy)
    assert data.texts == ["gift set", "gift set", "boots"]
    assert data.y.tolist() == [["Bags", "Accessories"], ["Tops", "Accessories"], ["Shoes", "Boots"]]
    file.write_text('text,path\nboots,Shoes > Boots\ngift set,"Bags > Accessories | Tops > Sneakers"\n')
    with pytest.raises(DataError, match=r"'Sneakers' is not under category 'Tops'.*\(row 2 of multi.csv\)"):
        read_labeled(file, taxonomy)


def test_set_metrics():
    truth = [{"a", "b"}, {"c"}, {"d"}]
    predicted = [{"a"}, {"c"}, set()]
    assert example_f1(truth, predicted) == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert subset_accuracy(truth, predicted) == pytest.approx(1 / 3)


def test_strip_gender_removes_every_spelling():
    assert strip_gender("Puma Men's Black Running Shoes") == "Puma Black Running Shoes"
    assert strip_gender("Nike Women Grey Tshirt") == "Nike Grey Tshirt"
    assert strip_gender("Gini Boys Unisex Girls’s Cap") == "Gini Cap"
    assert strip_gender("Menthol Womenswear Oomen") == "Menthol Womenswear Oomen"  # words, not substrings


def test_fashion_gender_view_merges_identical_texts():
    products = pd.DataFrame(
        {
            "text": ["Puma Men Black Shoes", "Puma Women Black Shoes", "Titan Men Watch", "Titan Men Watch"],
            "category": ["Shoes", "Shoes", "Watches", "Watches"],
            "subcategory": ["Casual Shoes", "Casual Shoes", "Watches", "Watches"],
            "gender": ["Men", "Women", "Men", "Men"],
        }
    )
    rows, taxonomy = fashion_gender_view(products)
    assert len(taxonomy.categories) == 3 and len(taxonomy) == 3
    by_text = dict(zip(rows["text"], rows["path"], strict=True))
    assert by_text == {
        "Puma Black Shoes": "Men Shoes > Men Casual Shoes | Women Shoes > Women Casual Shoes",
        "Titan Watch": "Men Watches > Men Watches",
    }
    assert set(rows["split"]) <= {"train", "valid", "test"}
