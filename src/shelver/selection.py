"""Model selection: settings left at ``"auto"`` are chosen on validation data.

The candidates are the configurations the benchmarks saw win (``benchmarks/results/heads.md``,
``router.md``, ``representation.md``): a flat head and a per-group head with the leaf-sum router,
each with lexical features, each with class weights ``None`` and ``"balanced"``. Settings fixed
by the user (config file, ``--set`` or Python) stay fixed; only the ``"auto"`` ones vary.

The data are encoded once and the lexical block is built once: one fitted model supplies the
encoder (with its cache), the vocabulary and the training matrix, and every other candidate only
fits its head on that matrix. A per-group head with the leaf-sum router reuses the flat head of
the same class weights as its router (it is the same fit), so it costs only its group models.

Candidates are scored on ``valid`` by level-2 accuracy: the share of queries put on the right
shelf, the figure a shop sees. The first candidate (in the order above: fewer models first) within
one paired standard error of the best is chosen: a difference smaller than the noise of the scored
rows is no reason to leave the simpler model. Without ``valid``, a stratified share of train is
held out for the choice and the winner is refitted on all of train.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from shelver.classifier import HierarchicalClassifier
from shelver.config import AUTO, AUTO_CLASS_WEIGHTS, AUTO_HEADS, AUTO_LEXICAL, AUTO_ROUTER, TrainConfig
from shelver.data import LabeledData
from shelver.encoders import Encoder
from shelver.features import training_matrix
from shelver.heads import FlatHead, Head, LeafSumRouter, LinearOptions, LinearSoftmax, PerGroupHead, make_head
from shelver.metrics import classification_metrics
from shelver.taxonomy import Taxonomy

# what the choice maximises: level-2 accuracy (macro-F1 and level 1 are recorded beside it)
METRIC = "level2_accuracy"
# share of each subcategory's training rows held out for the choice when there is no --valid:
# a tenth of grocery's 33k rows is 3.3k, a standard error of ~0.7 points on accuracy
HOLDOUT_SHARE = 0.1
# the heads and class weights "auto" chooses among (the router of per_group is "leaves")
HEADS, CLASS_WEIGHTS = AUTO_HEADS, AUTO_CLASS_WEIGHTS


@dataclass(frozen=True)
class Candidate:
    """One configuration of the head the selection may choose."""

    kind: str
    router: str
    class_weight: str | None

    def apply(self, config: TrainConfig) -> TrainConfig:
        head = dataclasses.replace(
            config.head, kind=self.kind, router=self.router, class_weight=self.class_weight
        )
        return dataclasses.replace(config, head=head)

    def to_dict(self) -> dict[str, Any]:
        router = self.router if self.kind == "per_group" else None  # only per_group has a router
        return {"head": self.kind, "router": router, "class_weight": self.class_weight}


def needs_selection(config: TrainConfig) -> bool:
    """True when the head or its class weights are left to the selection."""
    return config.head.kind == AUTO or config.head.class_weight == AUTO


def resolve_fixed(config: TrainConfig) -> TrainConfig:
    """``"auto"`` settings that need no selection: lexical features on, the leaf-sum router."""
    lexical = dataclasses.replace(
        config.lexical, enabled=AUTO_LEXICAL if config.lexical.enabled == AUTO else config.lexical.enabled
    )
    router = AUTO_ROUTER if config.head.router == AUTO else config.head.router
    return dataclasses.replace(config, lexical=lexical, head=dataclasses.replace(config.head, router=router))


def candidates(config: TrainConfig) -> list[Candidate]:
    """Every combination of the settings left at ``"auto"``; the fixed ones as given."""
    kinds = HEADS if config.head.kind == AUTO else (config.head.kind,)
    weights = CLASS_WEIGHTS if config.head.class_weight == AUTO else (config.head.class_weight,)
    router = config.head.router
    return [Candidate(kind, router, weight) for kind in kinds for weight in weights]


def select_and_fit(
    config: TrainConfig,
    taxonomy: Taxonomy,
    data: LabeledData,
    valid: LabeledData | None,
    progress: bool = True,
    encoder: Encoder | None = None,
) -> HierarchicalClassifier:
    """The best candidate on ``valid`` (or a held-out share of ``data``), fitted on ``data``,
    with its record in ``selection_``. ``config`` has its fixed settings resolved already."""
    from shelver.training import build_model

    start = time.perf_counter()
    options = candidates(config)
    fit_on, scored_on = (data, valid) if valid is not None else holdout(data, taxonomy, config.seed)
    if not len(scored_on):  # too few rows to hold any out: the first (simplest) candidate
        model = build_model(options[0].apply(config), taxonomy, progress, encoder)
        model.fit(data.texts, data.y, source=data.source)
        return _with_record(model, _unscored(options[0], time.perf_counter() - start))
    base = build_model(options[0].apply(config), taxonomy, progress, encoder)
    base.fit(fit_on.texts, fit_on.y, source=fit_on.source)
    shared = time.perf_counter() - start  # encoding, the vocabulary and the first head
    models, rows, correct = _score_candidates(base, config, options, fit_on, scored_on)
    rows[0]["fit_seconds"] = round(shared, 2)
    best = _choose(rows, correct)
    model = models[best]
    if valid is None:  # refit the winner on every training row, reusing the encoder's cache
        model = build_model(options[best].apply(config), taxonomy, progress, base.encoder_)
        model.fit(data.texts, data.y, source=data.source)
    return _with_record(model, _record(rows, best, scored_on, valid is None, time.perf_counter() - start))


def _with_record(model: HierarchicalClassifier, record: dict[str, Any]) -> HierarchicalClassifier:
    """``model`` with how it was chosen in ``selection_`` (saved as ``selection.json``)."""
    return model.set_fitted(dataclasses.replace(model.fitted_state(), selection=record))


def _choose(rows: list[dict[str, Any]], correct: list[np.ndarray]) -> int:
    """The first candidate whose score is within one paired standard error of the best one's
    (the standard error of the mean of per-row differences; each row's ``behind_best_se``)."""
    top = max(range(len(rows)), key=lambda i: float(correct[i].mean()))
    chosen = top
    for i in reversed(range(len(rows))):
        gap = float(correct[top].mean() - correct[i].mean())
        rows[i]["behind_best"], rows[i]["behind_best_se"] = (
            round(gap, 4),
            round(_paired_se(correct[top], correct[i]), 4),
        )
        if gap <= rows[i]["behind_best_se"]:
            chosen = i
    return chosen


def _paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of ``mean(a) - mean(b)`` over the same rows."""
    diff = a.astype(np.float64) - b.astype(np.float64)
    return float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0


def holdout(data: LabeledData, taxonomy: Taxonomy, seed: int) -> tuple[LabeledData, LabeledData]:
    """``(rest, held_out)``: ``HOLDOUT_SHARE`` of each subcategory's rows, rounded down (a
    subcategory with under ten rows keeps them all for training)."""
    leaves = np.array([taxonomy.leaf_index[tuple(row)] for row in data.y])
    rng = np.random.default_rng(seed)
    held = np.zeros(len(leaves), dtype=bool)
    for leaf in np.unique(leaves):
        rows = np.flatnonzero(leaves == leaf)
        held[rng.choice(rows, size=int(len(rows) * HOLDOUT_SHARE), replace=False)] = True
    return _subset(data, ~held, "train minus held out"), _subset(data, held, "held out of train")


def _subset(data: LabeledData, keep: np.ndarray, origin: str) -> LabeledData:
    rows = np.flatnonzero(keep)
    return LabeledData(
        [data.texts[i] for i in rows],
        data.y[rows],
        [data.source[i] for i in rows],
        f"{data.origin}: {origin}",
    )


def _score_candidates(
    base: HierarchicalClassifier,
    config: TrainConfig,
    options: list[Candidate],
    fit_on: LabeledData,
    scored_on: LabeledData,
) -> tuple[list[HierarchicalClassifier], list[dict[str, Any]], list[np.ndarray]]:
    """Each candidate's model (``base`` with the candidate's head), its scores, and which scored
    rows it puts on the right leaf."""
    texts, leaves = _training_rows(base, fit_on)
    X = training_matrix(base.join(base.encoder_.encode(texts), texts))  # built once for every head
    scored_features = base.features(scored_on.texts)
    counts = {" > ".join(p): int(n) for p, n in zip(base.taxonomy_.paths, base.train_counts_, strict=True)}
    heads: dict[Candidate, Head] = {options[0]: base.head_}
    models, rows, correct = [], [], []
    for option in options:
        began = time.perf_counter()
        head = heads.get(option) or _fit_head(option, config, base.taxonomy_, X, leaves, heads)
        heads[option] = head
        seconds = time.perf_counter() - began
        model = _with_head(base, option, head)
        predicted = _predict(model, scored_features)
        scores = classification_metrics(scored_on.y, predicted, counts)
        models.append(model)
        rows.append({**option.to_dict(), **_scores(scores), "fit_seconds": round(seconds, 2)})
        correct.append((predicted == scored_on.y).all(axis=1))
    return models, rows, correct


def _training_rows(base: HierarchicalClassifier, data: LabeledData) -> tuple[list[str], np.ndarray]:
    """The rows ``base.fit`` trained its head on (a multi-label model merges repeated texts)."""
    texts, labels = data.texts, data.y
    if base.multi_label_:
        from shelver.data import merge_multi_label

        texts, labels = merge_multi_label(texts, labels)
    return texts, np.array([base.taxonomy_.leaf_index[tuple(row)] for row in labels])


def _fit_head(
    option: Candidate,
    config: TrainConfig,
    taxonomy: Taxonomy,
    X: Any,
    leaves: np.ndarray,
    fitted: dict[Candidate, Head],
) -> Head:
    linear = LinearOptions(
        C=config.head.C,
        class_weight=option.class_weight,
        max_iter=config.head.max_iter,
        random_state=config.seed,
        router=option.router,
    )
    if option.kind == "flat":
        return _fit_flat(taxonomy, X, leaves, linear, fitted.get(Candidate("flat", option.router, None)))
    flat = fitted.get(Candidate("flat", option.router, option.class_weight))
    if option.kind == "per_group" and option.router == "leaves" and isinstance(flat, FlatHead):
        # the leaf-sum router is a softmax over leaves on every row: the flat head's very model
        head, model = PerGroupHead(taxonomy), flat.leaf_model
        return head.fit(X, leaves, linear, router=LeafSumRouter(model, head.membership), init=model)
    return make_head(option.kind, taxonomy).fit(X, leaves, linear)


def _fit_flat(
    taxonomy: Taxonomy, X: Any, leaves: np.ndarray, linear: LinearOptions, unweighted: Head | None
) -> FlatHead:
    """A flat head; the balanced one starts from the unweighted one's weights when that exists:
    the two optima are near, and lbfgs gets there in fewer iterations than from zero."""
    head = FlatHead(taxonomy)
    init = unweighted.leaf_model if isinstance(unweighted, FlatHead) else None
    head.leaf_model = LinearSoftmax.fit(X, leaves, linear, init=init)
    return head


def _with_head(base: HierarchicalClassifier, option: Candidate, head: Head) -> HierarchicalClassifier:
    """``base`` (same encoder, vocabulary and training rows) answering with another fitted head.
    Its calibration is the identity until ``calibrate``, which ``train_model`` runs on valid."""
    if head is base.head_:
        return base
    model = copy.copy(base).set_params(
        head=option.kind, router=option.router, class_weight=option.class_weight
    )
    return model.set_fitted(dataclasses.replace(base.fitted_state(), head=head, decisions=None))


def _predict(model: HierarchicalClassifier, features: Any) -> np.ndarray:
    """The arg-max path of each row (calibration never moves it)."""
    _, leaves = model.head_.decode(*model.head_proba(features))
    return np.array([model.taxonomy_.paths[i] for i in leaves], dtype=object).reshape(-1, 2).astype(str)


def _scores(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        "level2_accuracy": round(metrics["level2"]["accuracy"], 4),
        "level2_macro_f1": round(metrics["level2"]["macro_f1"], 4),
        "level1_accuracy": round(metrics["level1"]["accuracy"], 4),
    }


def _record(
    rows: list[dict[str, Any]],
    best: int,
    scored_on: LabeledData,
    held_out: bool,
    seconds: float,
) -> dict[str, Any]:
    """What ``selection.json`` holds: every candidate's scores and the choice."""
    return {
        "metric": METRIC,
        "rule": "the first candidate within one paired standard error of the best",
        "scored_on": f"{HOLDOUT_SHARE:.0%} of train held out per subcategory" if held_out else "valid",
        "n_scored": len(scored_on),
        "refit_on_all_train": held_out,
        "chosen": {k: rows[best][k] for k in ("head", "router", "class_weight")},
        "candidates": rows,
        "per_group_minus_flat": _per_group_margin(rows),
        # the first candidate's fit_seconds include encoding the data and building the vocabulary,
        # which every candidate reuses; each later candidate's is its head alone
        "seconds": round(seconds, 1),
    }


def _unscored(first: Candidate, seconds: float) -> dict[str, Any]:
    return {
        "metric": METRIC,
        "rule": "the first candidate: no subcategory had enough training rows to hold a share out",
        "scored_on": "nothing (no --valid, and no subcategory with 10 training rows)",
        "n_scored": 0,
        "refit_on_all_train": False,
        "chosen": first.to_dict(),
        "candidates": [],
        "per_group_minus_flat": None,
        "seconds": round(seconds, 1),
    }


def _per_group_margin(rows: list[dict[str, Any]]) -> float | None:
    """Best per_group score minus best flat score (points of the metric), when both ran."""
    best = {
        kind: max((r[METRIC] for r in rows if r["head"] == kind), default=None)
        for kind in ("flat", "per_group")
    }
    if best["flat"] is None or best["per_group"] is None:
        return None
    return round(best["per_group"] - best["flat"], 4)
