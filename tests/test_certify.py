"""Certified thresholds: the binomial tail and bound, Learn-then-Test, and what they promise."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from shelver import HierarchicalClassifier
from shelver.calibration import describe_fitted_on
from shelver.certify import (
    NEVER,
    binomial_tail,
    certified_threshold,
    min_rows_to_certify,
    point_threshold,
    precision_lower_bound,
)
from shelver.errors import ConfigError
from shelver.metrics import hierarchical_risk_coverage


@pytest.mark.parametrize(
    "hits, n, p", [(0, 5, 0.3), (3, 5, 0.3), (90, 100, 0.9), (280, 300, 0.95), (7, 7, 0.5)]
)
def test_binomial_tail_is_exact(hits, n, p):
    assert binomial_tail(hits, n, p) == pytest.approx(stats.binom.sf(hits - 1, n, p), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("hits, n", [(1, 1), (9, 10), (95, 100), (300, 300), (250, 300)])
def test_lower_bound_is_clopper_pearson(hits, n):
    expected = stats.beta.ppf(0.1, hits, n - hits + 1)
    assert precision_lower_bound(hits, n, 0.1) == pytest.approx(expected, abs=1e-6)


def scores(rng, n, skill=3.0):
    """Calibrated-looking confidences: each row is right with probability equal to its confidence."""
    confidence = 1 / (1 + np.exp(-rng.normal(skill * 0.5, 1.5, n)))
    return confidence, rng.random(n) < confidence


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 600), target=st.sampled_from([0.8, 0.9, 0.95]))
def test_certified_is_never_looser_than_the_point_estimate(seed, n, target):
    confidence, right = scores(np.random.default_rng(seed), n)
    point = point_threshold(confidence, right, target, 0.1)
    certified = certified_threshold(confidence, right, target, 0.1)
    assert certified.threshold >= point.threshold
    assert certified.coverage <= point.coverage
    if certified.certified:
        assert certified.lower_bound >= target - 1e-9 and certified.precision >= target


def test_refuses_to_certify_on_too_few_rows_and_names_the_labels_needed():
    confidence, right = np.linspace(0.99, 0.95, 15), np.ones(15, dtype=bool)  # all right, but 15 rows
    fit = certified_threshold(confidence, right, 0.9, 0.1)
    assert min_rows_to_certify(0.9, 0.1) == 22 > 15
    assert not fit.certified and fit.threshold == NEVER and fit.answered == 0
    assert fit.labels_needed is not None and fit.labels_needed >= 22
    assert point_threshold(confidence, right, 0.9, 0.1).certified  # the point estimate would answer all


def test_no_labels_can_certify_a_target_the_model_never_reaches():
    confidence = np.linspace(0.9, 0.1, 400)
    right = np.arange(400) % 2 == 0  # 50% precision at every threshold
    fit = certified_threshold(confidence, right, 0.9, 0.1)
    assert not fit.certified and fit.labels_needed is None


def test_the_guarantee_holds_on_new_rows_in_at_least_1_minus_delta_of_samples():
    """300 labeled rows certify a threshold; 20,000 fresh rows measure its real precision."""
    rng, target, delta, misses = np.random.default_rng(0), 0.9, 0.1, 0
    fresh_conf, fresh_right = scores(rng, 20_000)
    for _ in range(100):
        fit = certified_threshold(*scores(rng, 300), target, delta)
        answered = fresh_conf >= fit.threshold
        misses += bool(answered.any()) and fresh_right[answered].mean() < target
    assert misses <= 15  # expected <= 10 of 100; binomial slack for a test that must not flake


def test_the_point_estimate_misses_more_often_than_the_certified_threshold():
    rng, misses = np.random.default_rng(1), {"point": 0, "certified": 0}
    fresh_conf, fresh_right = scores(rng, 20_000)
    for _ in range(60):
        sample = scores(rng, 300)
        for name, choose in (("point", point_threshold), ("certified", certified_threshold)):
            answered = fresh_conf >= choose(*sample, 0.9, 0.1).threshold
            misses[name] += bool(answered.any()) and fresh_right[answered].mean() < 0.9
    assert misses["point"] > misses["certified"]


def xy(frame):
    return frame["text"].tolist(), frame[["category", "subcategory"]].to_numpy().astype(str)


def test_machine_labels_never_set_a_threshold_when_human_labels_exist(taxonomy, tiny_frames):
    texts, y = xy(tiny_frames["train"])
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", C=0.3, target_precision=0.9)
    model.fit(texts, y)
    vtexts, vy = xy(tiny_frames["valid"])
    half = len(vtexts) // 2
    source = ["human"] * half + ["llm:qwen"] * (len(vtexts) - half)
    fitted_on = model.calibrate(vtexts, vy, source).calibrated_on_
    assert fitted_on["rows"] == half and fitted_on["human"]
    assert fitted_on["sources"] == {"human": half} and fitted_on["left_out"] == {
        "llm:qwen": len(vtexts) - half
    }
    assert fitted_on["method"] == "certified" and set(fitted_on["levels"]) == {"level1", "level2"}
    assert describe_fitted_on(fitted_on).startswith(f"thresholds fitted on {half:,} human-labeled rows")
    machine = model.calibrate(vtexts, vy, ["llm:qwen"] * len(vtexts)).calibrated_on_
    assert not machine["human"] and machine["rows"] == len(vtexts)
    assert describe_fitted_on(machine).startswith("thresholds unverified: fitted on machine labels")
    assert describe_fitted_on(None).startswith("thresholds unverified")


def test_delta_none_takes_the_point_estimate_and_bad_delta_is_refused(taxonomy, tiny_frames):
    texts, y = xy(tiny_frames["train"])
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder="hashing", target_precision=0.9, delta=None)
    fitted_on = model.fit(texts, y).calibrate(*xy(tiny_frames["valid"])).calibrated_on_
    assert fitted_on["method"] == "point"
    with pytest.raises(
        ConfigError, match=r"delta \(the chance a certified precision fails\) must be in \(0, 1\)"
    ):
        model.set_params(delta=1.5).calibrate(*xy(tiny_frames["valid"]))


def test_hierarchical_risk_coverage_climbs_from_the_leaf_to_the_category():
    rng = np.random.default_rng(0)
    conf1 = rng.uniform(0.5, 1.0, 500)
    conf2 = conf1 * rng.uniform(0.3, 1.0, 500)  # a path is never surer than its category
    right1 = rng.random(500) < conf1
    right2 = right1 & (rng.random(500) < conf2 / conf1)
    curve = hierarchical_risk_coverage(conf1, conf2, right1, right2)
    coverage, risk = np.array(curve["coverage"]), np.array(curve["risk"])
    assert np.all(np.diff(coverage) >= 0) and coverage[-1] == 1.0  # the lowest threshold answers all
    assert risk[-1] == pytest.approx(1 - (right1.sum() + right2.sum()) / 1000)
    assert 0 < curve["aurc"] < risk[-1]  # confident answers first: the area is below the final risk
    perfect = hierarchical_risk_coverage(conf1, conf2, np.ones(500, bool), np.ones(500, bool))
    assert perfect["aurc"] == 0.0 and max(perfect["risk"]) == 0.0
