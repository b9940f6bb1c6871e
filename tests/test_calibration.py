"""Calibration, thresholds and decisions: invariants on the tiny taxonomy and on random scores."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shelver import HierarchicalClassifier, load_model
from shelver.calibration import (
    Calibration,
    fit_temperature,
    temper,
)
from shelver.certify import precision_curve, threshold_for_precision
from shelver.decisions import Thresholds, decide, withhold
from shelver.errors import ConfigError
from shelver.metrics import coverage_at_precision, expected_calibration_error

HEADS = ["flat", "masked", "per_group"]
LEVELS = ["category", "subcategory"]


def xy(frame):
    return frame["text"].tolist(), frame[LEVELS].to_numpy().astype(str)


@pytest.fixture(scope="module", params=HEADS)
def pair(request, taxonomy, tiny_frames):
    """The same fitted model before and after calibration on valid (C small: not overconfident)."""
    texts, y = xy(tiny_frames["train"])
    raw = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", head=request.param, C=0.3).fit(
        texts, y
    )
    # the point estimate (delta=None): these tests are about calibration and back-off; the tiny
    # valid split is too small to certify 0.9 (tests/test_certify.py covers the certified thresholds)
    calibrated = HierarchicalClassifier(
        taxonomy=taxonomy, encoder="hashing", head=request.param, C=0.3, target_precision=0.9, delta=None
    ).fit(texts, y)
    return raw, calibrated.calibrate(*xy(tiny_frames["valid"]))


QUERIES = ["blue", "red", "gift", "zzz", "red boots", "black canvas sneakers", "tote", "shirt bag"]


def test_calibration_never_changes_the_argmax(pair, tiny_frames):
    raw, calibrated = pair
    texts = tiny_frames["test"]["text"].tolist() + QUERIES
    assert calibrated.calibration_ != Calibration(leaf_first=calibrated.head_.leaf_first)  # it did fit
    before, after = raw.scores(texts), calibrated.scores(texts)
    np.testing.assert_array_equal(before.leaves, after.leaves)
    assert [p.candidate for p in raw.classify(texts)] == [p.candidate for p in calibrated.classify(texts)]
    # the calibrated probabilities themselves keep the arg-max per level and inside the category
    P1, P2 = calibrated.predict_proba(texts)
    if not calibrated.head_.leaf_first:
        np.testing.assert_array_equal(P1.argmax(axis=1), before.categories)
    else:  # the level-1 temperature keeps the order of the (tempered) leaf sums
        np.testing.assert_array_equal(P1.argmax(axis=1), calibrated.head_.category_sums(P2).argmax(axis=1))
    leaf_category = np.asarray(calibrated.taxonomy_.leaf_category)
    masked = np.where(leaf_category[None, :] == after.categories[:, None], P2, -1.0)
    np.testing.assert_array_equal(masked.argmax(axis=1), before.leaves)
    np.testing.assert_allclose(P1.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(P2.sum(axis=1), 1.0, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    t1=st.floats(0.25, 20.0),
    t2=st.floats(0.25, 20.0),
    tg=st.floats(0.25, 20.0),
)
def test_temperatures_keep_argmax_per_level_and_group(seed, t1, t2, tg):
    rng = np.random.default_rng(seed)
    leaf_category = np.array([0, 0, 0, 1, 1, 2])
    P2 = rng.dirichlet(np.full(6, 0.3), size=20).astype(np.float32)
    P1 = np.zeros((20, 3), dtype=np.float32)
    np.add.at(P1.T, leaf_category, P2.T)
    P1c, P2c = Calibration(t1, t2, {0: tg}).apply(P1, P2, leaf_category)
    np.testing.assert_array_equal(P1c.argmax(axis=1), P1.argmax(axis=1))
    for c in range(3):
        cols = np.flatnonzero(leaf_category == c)
        np.testing.assert_array_equal(P2c[:, cols].argmax(axis=1), P2[:, cols].argmax(axis=1))
    np.testing.assert_allclose(P2c @ np.eye(3)[leaf_category], P1c, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), t1=st.floats(0.25, 20.0), t2=st.floats(0.25, 20.0))
def test_flat_level1_temperature_keeps_the_order_of_the_sums(seed, t1, t2):
    rng = np.random.default_rng(seed)
    leaf_category = np.array([0, 0, 0, 1, 1, 2])
    P2 = rng.dirichlet(np.full(6, 0.3), size=20).astype(np.float32)
    P1c, P2c = Calibration(t1, t2, leaf_first=True).apply(P2 @ np.eye(3)[leaf_category], P2, leaf_category)
    sums = P2c @ np.eye(3)[leaf_category]
    np.testing.assert_array_equal(P2c.argmax(axis=1), P2.argmax(axis=1))
    # a larger sum never gets a smaller calibrated probability (tiny sums may tie in float32)
    larger = sums[:, :, None] > sums[:, None, :]
    assert not np.any(larger & (P1c[:, :, None] < P1c[:, None, :]))
    np.testing.assert_allclose(P1c.sum(axis=1), 1.0, atol=1e-5)


def flat_scores(seed: int, cat_scale: float, within_scale: float, n: int = 4000):
    """A leaf-first head whose categories are ``cat_scale`` times too confident (logits) and
    whose leaves inside a category ``within_scale`` times: one leaf temperature cannot fix both."""
    rng = np.random.default_rng(seed)
    leaf_category = np.repeat(np.arange(4), 3)
    members = np.eye(4)[leaf_category]
    q = temper(np.exp(rng.normal(size=(n, 4)) * 1.5), 1.0)
    w = np.exp(rng.normal(size=(n, 12)) * 1.5)
    w /= w @ members @ members.T
    cumulative = np.cumsum(q[:, leaf_category] * w, axis=1)
    truth = np.minimum((cumulative < rng.uniform(size=(n, 1))).sum(axis=1), 11)
    within = w**within_scale
    P2 = temper(q, 1 / cat_scale)[:, leaf_category] * within / (within @ members @ members.T)
    return P2 @ members, P2, truth, leaf_category


@pytest.mark.parametrize("cat_scale, within_scale", [(3.0, 1 / 3), (0.5, 2.0)], ids=["over", "under"])
def test_flat_level1_temperature_lowers_the_level1_ece(cat_scale, within_scale):
    P1, P2, truth, leaf_category = flat_scores(0, cat_scale, within_scale)
    fit, held = slice(0, 2000), slice(2000, None)  # fitted on one half, measured on the other
    calibration = Calibration.fit(P1[fit], P2[fit], truth[fit], leaf_category, leaf_first=True)
    leaf_only = Calibration(level2=calibration.level2, leaf_first=True)  # before issue 4's fix
    categories = leaf_category[P2[held].argmax(axis=1)]  # flat decodes the leaf first
    right, rows = categories == leaf_category[truth[held]], np.arange(len(categories))

    def level1_ece(c: Calibration | None) -> float:
        P = P1[held] if c is None else c.apply(P1[held], P2[held], leaf_category)[0]
        return expected_calibration_error(P[rows, categories], right)

    after = level1_ece(calibration)
    assert after <= level1_ece(None) and after < level1_ece(leaf_only) * 0.6
    P1c, P2c = calibration.apply(P1[held], P2[held], leaf_category)
    np.testing.assert_array_equal(P1c.argmax(axis=1), (P2c @ np.eye(4)[leaf_category]).argmax(axis=1))
    np.testing.assert_array_equal(P2c.argmax(axis=1), P2[held].argmax(axis=1))
    np.testing.assert_allclose(P1c.sum(axis=1), 1.0, atol=1e-5)
    names = ["A", "B", "C", "D"]
    assert Calibration.from_dict(calibration.to_dict(names), names) == calibration


def test_flat_identity_level1_keeps_the_sums_exactly():
    """Models saved before the level-1 temperature of the flat head load with ``level1`` 1."""
    P1, P2, _, leaf_category = flat_scores(1, 1.0, 1.0, n=50)
    P1c, _ = Calibration(level2=2.0, leaf_first=True).apply(P1, P2, leaf_category)
    np.testing.assert_array_equal(P1c, (temper(P2, 2.0) @ np.eye(4)[leaf_category]).astype(np.float32))


def test_fit_temperature_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 8)) * 2
    truth = np.array([rng.choice(8, p=p) for p in temper(np.exp(logits), 1.0)])
    overconfident = temper(np.exp(logits), 1 / 3)  # logits x 3
    assert fit_temperature(overconfident, truth) == pytest.approx(3.0, rel=0.1)
    conf = overconfident.max(axis=1)
    right = overconfident.argmax(axis=1) == truth
    fixed = temper(overconfident, fit_temperature(overconfident, truth)).max(axis=1)
    assert expected_calibration_error(fixed, right) < expected_calibration_error(conf, right) / 3


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), steps=st.lists(st.floats(0, 1), min_size=2, max_size=8))
def test_coverage_is_monotone_in_the_thresholds(seed, steps):
    rng = np.random.default_rng(seed)
    conf1 = rng.uniform(size=200)
    conf2 = conf1 * rng.uniform(size=200)  # joint confidence never exceeds the category's
    previous = (2.0, 2.0)
    for t in sorted(steps):
        for t1, t2 in ((t, 0.5), (0.5, t), (t, t)):
            codes = decide(conf1, conf2, Thresholds(t1, t2))
            full, answered = np.mean(codes == 0), np.mean(codes < 2)
            assert full <= np.mean(decide(conf1, conf2, Thresholds(t1, t2 * 0.9)) == 0)
            assert answered <= np.mean(decide(conf1, conf2, Thresholds(t1 * 0.9, t2 * 0.9)) < 2)
        codes = decide(conf1, conf2, Thresholds(t, t))
        now = (np.mean(codes == 0), np.mean(codes < 2))
        assert now[0] <= previous[0] and now[1] <= previous[1]
        previous = now


def test_coverage_falls_as_the_model_thresholds_rise(pair, tiny_frames, taxonomy):
    raw, _ = pair
    texts = tiny_frames["test"]["text"].tolist() + QUERIES
    coverages = []
    for t in np.linspace(0, 1, 11):
        raw.set_params(thresholds=(float(t), float(t)))
        raw._init_decisions()
        predicted = raw.predict(texts)
        coverages.append(((predicted[:, 1] != "").mean(), (predicted[:, 0] != "").mean()))
    raw.set_params(thresholds=None)
    raw._init_decisions()
    assert all(a[0] >= b[0] and a[1] >= b[1] for a, b in itertools.pairwise(coverages))
    assert coverages[0] == (1.0, 1.0) and coverages[-1][0] < 1.0


def test_backoff_never_returns_a_subcategory_without_its_category(pair, tiny_frames, taxonomy):
    _, calibrated = pair
    texts = tiny_frames["test"]["text"].tolist() + QUERIES
    predictions = calibrated.classify(texts)
    assert {p.decision for p in predictions} >= {"full"}
    for row, p in zip(calibrated.predict(texts), predictions, strict=True):
        assert tuple(row) == p.path
        if p.path[1]:
            assert p.path[0] and p.path[1] in taxonomy.children((p.path[0],))
        assert (p.decision == "full") == bool(p.path[1])
        assert (p.decision == "abstain") == (not p.path[0]) == (p.paths == ())
        assert p.reason.startswith("subcategory confidence")


def test_withhold_never_keeps_a_level_below_a_withheld_one():
    paths = np.array([["A", "a"]] * 3, dtype=object)
    out = withhold(paths, np.array([0, 1, 2]))
    assert out.tolist() == [["A", "a"], ["A", ""], ["", ""]]


def test_thresholds_chosen_on_valid_reach_the_target_there(pair, tiny_frames):
    _, calibrated = pair
    texts, y = xy(tiny_frames["valid"])
    predicted = calibrated.predict(texts)
    answered = predicted[:, 1] != ""
    assert answered.any()
    assert np.mean((predicted[answered] == y[answered]).all(axis=1)) >= 0.9
    answered1 = predicted[:, 0] != ""
    assert np.mean(predicted[answered1, 0] == y[answered1, 0]) >= 0.9


def test_threshold_for_precision_is_the_most_coverage_at_the_target():
    conf = np.array([0.99, 0.9, 0.8, 0.7, 0.6, 0.5])
    right = np.array([1, 1, 0, 1, 1, 0], dtype=bool)
    assert threshold_for_precision(conf, right, 0.8) == 0.6  # 4 of 5 answers right
    assert threshold_for_precision(conf, right, 1.0) == 0.9
    assert threshold_for_precision(conf, np.zeros(6, bool), 0.5) > 1.0  # never answer
    thresholds, coverage, _ = precision_curve(np.array([0.5, 0.5, 0.4]), np.array([1, 0, 1]))
    assert thresholds.tolist() == [0.5, 0.4] and coverage.tolist() == [2 / 3, 1.0]  # ties answered together
    assert coverage_at_precision(conf, right, (0.8, 1.0)) == {"0.8": 5 / 6, "1.0": 2 / 6}


def test_save_load_keeps_calibration_and_thresholds(pair, tiny_frames, tmp_path):
    _, calibrated = pair
    texts = tiny_frames["test"]["text"].tolist() + QUERIES
    calibrated.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.calibration_ == calibrated.calibration_
    for before, after in zip(calibrated.predict_proba(texts), loaded.predict_proba(texts), strict=True):
        np.testing.assert_array_equal(after, before)
    assert loaded.thresholds_ == calibrated.thresholds_
    assert [p.to_dict() for p in loaded.classify(texts)] == [p.to_dict() for p in calibrated.classify(texts)]
    assert "calibration.json" in (tmp_path / "model" / "manifest.json").read_text()
    assert not list((tmp_path / "model").glob("*.pkl"))


def test_decision_parameter_errors(taxonomy, tiny_frames):
    texts, y = xy(tiny_frames["train"])
    with pytest.raises(ConfigError, match=r"by hand or target_precision=\.\.\., not both"):
        HierarchicalClassifier(
            taxonomy=taxonomy, encoder="hashing", thresholds=(0.5, 0.5), target_precision=0.9
        ).fit(texts, y)
    with pytest.raises(ConfigError, match=r"thresholds must be \(level1, level2\) confidences in \[0, 1\]"):
        HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", thresholds=(0.5, 1.5)).fit(texts, y)
    with pytest.raises(ConfigError, match=r"target_precision must be in \(0, 1\), got 1.5"):
        HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", target_precision=1.5).fit(texts, y)
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing").fit(texts, y)
    with pytest.raises(ConfigError, match=r"target_precision must be in \(0, 1\), got 0"):
        model.set_params(target_precision=0).calibrate(*xy(tiny_frames["valid"]))


def test_calibration_and_decisions_import_without_sklearn_or_torch():
    code = (
        "import sys, shelver.calibration, shelver.decisions; "
        "bad = [m for m in ('torch', 'sklearn', 'pandas') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
