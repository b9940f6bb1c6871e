"""The defaults: "auto" settings chosen on valid, explicit ones kept, the record saved and hashed."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from shelver import load_model
from shelver.config import HEAD_KINDS, ROUTERS, TrainConfig, load_config
from shelver.data import LabeledData
from shelver.errors import ConfigError, ModelDirError
from shelver.heads import HEADS
from shelver.report import evaluate, render_markdown
from shelver.selection import HOLDOUT_SHARE, candidates, holdout, resolve_fixed
from shelver.training import build_model, resolved_config, train_model


def as_data(frame, origin: str = "t") -> LabeledData:
    y = frame[["category", "subcategory"]].to_numpy().astype(str)
    return LabeledData(frame["text"].tolist(), y, ["human"] * len(frame), origin)


def hashing(*overrides: str) -> TrainConfig:
    return load_config(None, ["encoder.name=hashing", *overrides])


@pytest.fixture(scope="module")
def chosen(taxonomy, tiny_frames):
    train, valid = as_data(tiny_frames["train"]), as_data(tiny_frames["valid"])
    return train_model(hashing(), taxonomy, train, progress=False, valid=valid)


def test_defaults_leave_the_head_and_class_weights_to_the_selection():
    config = TrainConfig()
    assert (config.head.kind, config.head.router, config.head.class_weight) == ("auto",) * 3
    assert config.lexical.enabled == "auto"
    names = [(c.kind, c.router, c.class_weight) for c in candidates(resolve_fixed(config))]
    assert names == [
        ("flat", "leaves", None),
        ("flat", "leaves", "balanced"),
        ("per_group", "leaves", None),
        ("per_group", "leaves", "balanced"),
    ]


def test_the_simplest_candidate_within_one_paired_standard_error_of_the_best_is_chosen():
    from shelver.selection import _choose

    n = 400
    base = np.arange(n) < 300  # 0.75
    near = base.copy()
    near[300:306], near[:4] = True, False  # 6 rows won, 4 lost: +0.005, paired SE 0.0079
    far = np.arange(n) < 340  # 40 rows won, none lost: +0.1, far past the noise
    rows = [{"level2_accuracy": float(c.mean())} for c in (base, near)]
    assert _choose(rows, [base, near]) == 0
    assert rows[0]["behind_best"] == 0.005 and rows[0]["behind_best_se"] == pytest.approx(0.0079, abs=1e-4)
    rows = [{"level2_accuracy": float(c.mean())} for c in (base, near, far)]
    assert _choose(rows, [base, near, far]) == 2


def test_config_names_match_the_head_registry():
    assert set(HEAD_KINDS) == set(HEADS)
    assert set(ROUTERS) == {"categories", "leaves"}


def test_every_candidate_is_scored_and_the_best_is_chosen(chosen):
    record = chosen.selection_
    assert record["scored_on"] == "valid" and record["n_scored"] == 36 and not record["refit_on_all_train"]
    assert len(record["candidates"]) == 4
    scores = [row["level2_accuracy"] for row in record["candidates"]]
    first_best = record["candidates"][int(np.argmax(scores))]
    assert record["chosen"] == {k: first_best[k] for k in ("head", "router", "class_weight")}
    assert chosen.head == record["chosen"]["head"] and chosen.lexical is True
    flat = max(r["level2_accuracy"] for r in record["candidates"] if r["head"] == "flat")
    per_group = max(r["level2_accuracy"] for r in record["candidates"] if r["head"] == "per_group")
    assert record["per_group_minus_flat"] == pytest.approx(per_group - flat)
    assert chosen.calibrated_on_ is not None  # the winner is calibrated on valid like any model


def test_reusing_the_flat_fit_as_the_leaf_sum_router_changes_nothing(taxonomy, tiny_xy):
    from shelver.encoders import make_encoder
    from shelver.heads import FlatHead, LeafSumRouter, LinearOptions, PerGroupHead

    texts, y = tiny_xy
    X = make_encoder("hashing").encode(texts)
    leaves = np.array([taxonomy.leaf_index[tuple(row)] for row in y])
    options = LinearOptions(router="leaves")
    flat = FlatHead(taxonomy).fit(X, leaves, options)
    shared = PerGroupHead(taxonomy)
    shared.fit(X, leaves, options, router=LeafSumRouter(flat.leaf_model, shared.membership))
    alone = PerGroupHead(taxonomy).fit(X, leaves, options)
    for got, expected in zip(shared.proba(X), alone.proba(X), strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    # each group's solver started from the flat model's rows of its children: the same optimum,
    # within the solver's tolerance (lbfgs stops at tol=1e-4)
    started = PerGroupHead(taxonomy)
    started.fit(X, leaves, options, router=shared.router, init=flat.leaf_model)
    for got, expected in zip(started.proba(X), alone.proba(X), strict=True):
        np.testing.assert_allclose(got, expected, atol=5e-3)


def test_a_warm_start_is_the_model_restricted_to_the_classes_asked_for():
    from shelver.heads import LinearSoftmax

    coef = np.arange(12, dtype=np.float32).reshape(3, 4)
    model = LinearSoftmax(np.array([2, 5, 7]), coef, np.array([0.5, 1.0, 2.0], np.float32))
    start_coef, start_intercept = model.start_for(np.array([2, 7]))  # two classes: one row, their difference
    np.testing.assert_array_equal(start_coef, [coef[2] - coef[0]])
    np.testing.assert_array_equal(start_intercept, [1.5])
    three = model.start_for(np.array([2, 5, 7]))
    np.testing.assert_array_equal(three[0], coef)
    assert model.start_for(np.array([2, 3])) is None  # 3 is not a class of this model


def test_explicit_settings_are_kept_and_only_the_rest_is_chosen(taxonomy, tiny_frames):
    train, valid = as_data(tiny_frames["train"]), as_data(tiny_frames["valid"])
    model = train_model(hashing("head.kind=per_group"), taxonomy, train, progress=False, valid=valid)
    rows = model.selection_["candidates"]
    assert [(r["head"], r["router"], r["class_weight"]) for r in rows] == [
        ("per_group", "leaves", None),
        ("per_group", "leaves", "balanced"),
    ]
    assert model.head == "per_group" and model.router == "leaves"


def test_a_fully_explicit_configuration_trains_one_model_without_selection(taxonomy, tiny_frames):
    train = as_data(tiny_frames["train"])
    config = hashing("head.kind=masked", "head.class_weight=none", "lexical.enabled=false")
    model = train_model(config, taxonomy, train, progress=False)
    assert not hasattr(model, "selection_")
    assert (model.head, model.class_weight, model.lexical) == ("masked", None, False)
    explicit = build_model(resolve_fixed(config), taxonomy, progress=False).fit(train.texts, train.y)
    np.testing.assert_array_equal(model.predict(train.texts), explicit.predict(train.texts))


def test_without_valid_a_stratified_share_of_train_is_held_out_then_the_winner_refits(taxonomy, tiny_frames):
    train = as_data(tiny_frames["train"])
    model = train_model(hashing(), taxonomy, train, progress=False)
    record = model.selection_
    assert record["refit_on_all_train"] and record["scored_on"].startswith("10% of train held out")
    assert record["n_scored"] == 9 * int(14 * HOLDOUT_SHARE)  # one row of each leaf's 14
    assert model.train_counts_.sum() == len(train)  # refitted on every row


def test_with_too_few_rows_to_hold_out_the_first_candidate_is_kept_and_says_why(taxonomy):
    from conftest import make_rows

    train = as_data(make_rows(6, 0))  # 6 rows per subcategory: a tenth of each is none
    model = train_model(hashing(), taxonomy, train, progress=False)
    assert (model.head, model.class_weight) == ("flat", None)
    assert model.selection_["n_scored"] == 0 and model.selection_["candidates"] == []
    assert model.selection_["scored_on"].startswith("nothing (no --valid")


def test_holdout_takes_a_share_of_every_subcategory_and_is_deterministic(taxonomy, tiny_frames):
    from collections import Counter

    import pandas as pd

    train = as_data(pd.concat([tiny_frames["train"], tiny_frames["valid"]], ignore_index=True))
    rest, held = holdout(train, taxonomy, seed=0)
    leaves, counts = np.unique([" > ".join(row) for row in held.y], return_counts=True)
    assert len(leaves) == 9 and set(counts) == {int(18 * HOLDOUT_SHARE)}
    rows = lambda d: Counter(zip(d.texts, map(tuple, d.y), strict=True))  # noqa: E731
    assert rows(rest) + rows(held) == rows(train)  # every row on exactly one side
    assert holdout(train, taxonomy, seed=0)[1].texts == held.texts


def test_the_record_is_saved_hashed_and_loaded(chosen, tmp_path):
    out = chosen.save(tmp_path / "model")
    manifest = json.loads((out / "manifest.json").read_text())
    assert "selection.json" in manifest["files"]
    assert load_model(out).selection_ == chosen.selection_
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    record = json.loads((copy / "selection.json").read_text())
    record["chosen"]["head"] = "masked"
    (copy / "selection.json").write_text(json.dumps(record))
    with pytest.raises(ModelDirError, match="selection.json was modified after the model was saved"):
        load_model(copy)


def test_a_model_without_selection_leaves_no_stale_record(chosen, taxonomy, tiny_frames, tmp_path):
    out = chosen.save(tmp_path / "model")
    train = as_data(tiny_frames["train"])
    explicit = train_model(
        hashing("head.kind=flat", "head.class_weight=none"), taxonomy, train, progress=False
    )
    explicit.save(out)
    assert not (out / "selection.json").exists() and load_model(out).selection_ is None


def test_the_report_shows_every_candidate_and_the_margin(chosen, tiny_frames):
    text = render_markdown(evaluate(chosen, as_data(tiny_frames["test"])), "t")
    assert "## Model selection" in text and text.count("| per_group (leaves router) |") == 2
    assert "per_group tied" in text or "per_group won by" in text or "per_group lost by" in text


def test_resolved_config_names_what_was_chosen(chosen):
    config = resolved_config(hashing(), chosen)
    assert config.head.kind == chosen.head and config.lexical.enabled is True
    assert config.head.class_weight == chosen.class_weight


def test_build_model_refuses_auto_and_config_refuses_unknown_values(taxonomy):
    with pytest.raises(
        ConfigError, match=r'head.kind, head.router, head.class_weight, lexical.enabled = "auto"'
    ):
        build_model(TrainConfig(), taxonomy)
    with pytest.raises(ConfigError, match=r"head.kind is one of auto, flat, masked, per_group, got 'tree'"):
        load_config(None, ["head.kind=tree"])
    with pytest.raises(ConfigError, match=r"head.router is one of auto, categories, leaves, got 'sum'"):
        load_config(None, ["head.router=sum"])
    with pytest.raises(
        ConfigError, match=r'head.class_weight is "auto", "none" or "balanced", got \'equal\''
    ):
        load_config(None, ["head.class_weight=equal"])
    with pytest.raises(ConfigError, match=r'lexical.enabled is true, false or "auto" \(on\), got \'yes\''):
        load_config(None, ["lexical.enabled=yes"])


def test_the_estimator_defaults_are_the_configuration_and_its_first_candidate():
    """HierarchicalClassifier() is what 'auto' becomes without data to choose on; a drift fails."""
    from shelver import HierarchicalClassifier
    from shelver.config import AUTO_CLASS_WEIGHTS, AUTO_HEADS, AUTO_LEXICAL, AUTO_ROUTER

    config = TrainConfig()
    params = HierarchicalClassifier().get_params()
    assert (params["encoder"], params["C"], params["max_iter"], params["random_state"]) == (
        config.encoder.name,
        config.head.C,
        config.head.max_iter,
        config.seed,
    )
    assert (params["target_precision"], params["delta"], params["multi_label"]) == (
        config.decision.target_precision,
        config.decision.delta,
        config.decision.multi_label,
    )
    assert (params["head"], params["class_weight"], params["router"], params["lexical"]) == (
        AUTO_HEADS[0],
        AUTO_CLASS_WEIGHTS[0],
        AUTO_ROUTER,
        AUTO_LEXICAL,
    )
    assert candidates(config)[0].kind == params["head"]
