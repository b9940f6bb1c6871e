"""Calibrated confidences and the thresholds that turn them into answers. NumPy only.

Temperature scaling works on log-probabilities: ``softmax(log(p) / T)`` is exactly
``softmax(logits / T)`` for a softmax model, and it is monotone in ``p``, so it never changes
which class is the largest. Top-down heads (router, then one classifier per category) get one
temperature for the router and one per category group with enough validation rows (the others
share a pooled level-2 temperature); the flat head decodes the leaf first, so it gets one
temperature over all leaves (per-group temperatures would reorder leaves across groups).

The flat head's categories are sums of its tempered leaves, and a leaf temperature fitted for
level 2 can leave those sums mis-calibrated (grocery, flat head: level-1 ECE 0.019 -> 0.033).
So the sums get a temperature of their own, fitted after the leaf one. It is monotone per row:
no category changes rank and the leaves are untouched, so the decoded path never changes; the
price is that each level is calibrated on its own, and a category's confidence is no longer
the sum of its leaves' (it can fall below its best leaf's when the sums are flattened).

Everything is fitted on the validation split and stored as ``calibration.json`` in the model
directory, keyed by category and path names, never by pickled objects.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shelver.certify import (
    LevelFit,
    certified_threshold,
    point_threshold,
    precision_curve,
    threshold_for_precision,
)
from shelver.config import DecisionConfig
from shelver.decisions import Scores, Thresholds
from shelver.errors import ConfigError
from shelver.taxonomy import Taxonomy, format_path

# one temperature is one parameter: 50 rows pin it down well; smaller groups use the pooled one
MIN_GROUP_ROWS = 50
# a class gets its own multi-label threshold only with this many positive validation rows
MIN_CLASS_POSITIVES = 20
# a class threshold never reaches 0: that would answer every class, the impossible ones too
MIN_CLASS_THRESHOLD = 1e-6
# the search range of temperatures (log-spaced). Never sharpen more than 4x: a validation split
# the model gets all right pushes T towards 0 and would make every answer, even "zzz", certain
T_RANGE = (0.25, 20.0)
_TINY = 1e-30


# ---- temperatures -----------------------------------------------------------------------
def temper(P: np.ndarray, T: float | np.ndarray) -> np.ndarray:
    """``softmax(log(P) / T)`` row-wise; ``T`` a scalar or one value per column."""
    logits = np.log(np.maximum(P.astype(np.float64), _TINY)) / T
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def group_softmax(P: np.ndarray, T: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Temper ``P`` with a temperature per column, renormalising inside each group.

    ``members`` is the ``(n_columns, n_groups)`` 0/1 matrix of which column is in which group.
    Each group of ``P`` sums to 1, so its largest log-probability is at least ``-log(size)``
    and ``exp`` cannot underflow the whole group: no max-shift is needed.
    """
    exp = np.exp(np.log(np.maximum(P.astype(np.float64), _TINY)) / T)
    return exp / np.maximum(exp @ members @ members.T, _TINY)


def nll(P: np.ndarray, truth: np.ndarray) -> float:
    return float(-np.mean(np.log(np.maximum(P[np.arange(len(truth)), truth], _TINY))))


def fit_temperature(P: np.ndarray, truth: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood (golden-section on log T)."""
    if len(truth) == 0:
        return 1.0
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(temper(P, np.exp(a)), truth) <= nll(temper(P, np.exp(b)), truth):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


@dataclass
class Calibration:
    """Temperatures of one model: router (level 1), pooled level 2, and per category group.

    ``leaf_first`` (flat head): ``level2`` tempers the joint leaf distribution and ``level1``
    tempers its category sums. The identity calibration (all temperatures 1) changes nothing.
    """

    level1: float = 1.0
    level2: float = 1.0
    groups: dict[int, float] = field(default_factory=dict)
    leaf_first: bool = False
    n_rows: int = 0

    def apply(
        self, P1: np.ndarray, P2: np.ndarray, leaf_category: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated ``(P1, P2)``; arg-max per level and inside each group are unchanged."""
        members = _members(leaf_category, P1.shape[1])
        if self.leaf_first:
            P2c = temper(P2, self.level2)
            return _temper_sums(P2c @ members, self.level1), P2c.astype(np.float32)
        P1c = temper(P1, self.level1)
        within = P2 / np.maximum(P1, _TINY)[:, leaf_category]
        T = np.array([self.groups.get(int(c), self.level2) for c in leaf_category])
        P2c = group_softmax(within, T, members) * P1c[:, leaf_category]
        return P1c.astype(np.float32), P2c.astype(np.float32)

    @classmethod
    def fit(
        cls,
        P1: np.ndarray,
        P2: np.ndarray,
        leaves: np.ndarray,
        leaf_category: np.ndarray,
        leaf_first: bool = False,
    ) -> Calibration:
        """Fit on validation probabilities and true leaf indices (one row per (text, label))."""
        categories = leaf_category[leaves]
        if leaf_first:
            level2 = fit_temperature(P2, leaves)
            sums = temper(P2, level2) @ _members(leaf_category, P1.shape[1])
            return cls(fit_temperature(sums, categories), level2, {}, True, len(leaves))
        within = P2 / np.maximum(P1, _TINY)[:, leaf_category]
        level2 = fit_temperature(*_within_rows(within, leaves, leaf_category, categories >= 0))
        groups = {}
        for c in np.unique(categories):
            rows = categories == c
            if rows.sum() >= MIN_GROUP_ROWS and np.sum(leaf_category == c) > 1:
                groups[int(c)] = fit_temperature(*_within_rows(within, leaves, leaf_category, rows))
        return cls(fit_temperature(P1, categories), level2, groups, False, len(leaves))

    def to_dict(self, category_names: Sequence[str]) -> dict[str, Any]:
        return {
            "method": "temperature",
            "leaf_first": self.leaf_first,
            "n_rows": self.n_rows,
            "level1": self.level1,
            "level2": self.level2,
            "groups": {category_names[c]: t for c, t in sorted(self.groups.items())},
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any], category_names: Sequence[str]) -> Calibration:
        index = {name: i for i, name in enumerate(category_names)}
        groups = {index[name]: float(t) for name, t in payload.get("groups", {}).items()}
        return cls(
            float(payload["level1"]),
            float(payload["level2"]),
            groups,
            bool(payload["leaf_first"]),
            int(payload.get("n_rows", 0)),
        )


def _temper_sums(sums: np.ndarray, T: float) -> np.ndarray:
    """Category sums of a leaf-first head, tempered; ``T == 1`` keeps them exactly (models
    saved before the sums had a temperature of their own load with ``level1`` 1)."""
    return (sums if T == 1.0 else temper(sums, T)).astype(np.float32)


def _members(leaf_category: np.ndarray, n_groups: int) -> np.ndarray:
    members = np.zeros((len(leaf_category), n_groups))
    members[np.arange(len(leaf_category)), leaf_category] = 1.0
    return members


def _within_rows(
    within: np.ndarray, leaves: np.ndarray, leaf_category: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Within-group distributions of ``rows``, each restricted (by padding) to its true group.

    Leaves outside the row's true group are set to 0, which ``temper`` maps to ~0 mass.
    """
    sub, truth = within[rows], leaves[rows]
    same_group = leaf_category[None, :] == leaf_category[truth][:, None]
    return np.where(same_group, sub, 0.0), truth


# ---- choosing thresholds ------------------------------------------------------------------
def threshold_for_f1(scores: np.ndarray, positive: np.ndarray) -> float:
    """The threshold maximising F1 of one class (positive = the class is among the labels)."""
    thresholds, coverage, precision = precision_curve(scores, positive)
    answered = coverage * len(scores)
    recall = precision * answered / max(int(positive.sum()), 1)
    f1 = 2 * precision * recall / np.maximum(precision + recall, _TINY)
    return float(thresholds[int(np.argmax(f1))])


def per_class_thresholds(
    P: np.ndarray, positives: np.ndarray, target: float | None, default: float
) -> np.ndarray:
    """One threshold per column of ``P`` against the 0/1 ``positives`` matrix of label sets.

    Columns with too few positives use the threshold chosen on all columns pooled, or
    ``default`` when even the pool is empty.
    """

    def choose(scores: np.ndarray, labels: np.ndarray) -> float:
        if target is None:
            return threshold_for_f1(scores, labels)
        return threshold_for_precision(scores, labels, target)

    pooled = choose(P.ravel(), positives.ravel()) if positives.any() else default
    out = np.full(P.shape[1], pooled, dtype=np.float64)
    for j in np.flatnonzero(positives.sum(axis=0) >= MIN_CLASS_POSITIVES):
        out[j] = choose(P[:, j], positives[:, j])
    return np.maximum(out, MIN_CLASS_THRESHOLD)


# ---- the estimator's thresholds -------------------------------------------------------------
# a multi-label softmax spreads a text's mass over its labels (two labels: ~0.5 each), so an
# untuned multi-label model adds every other label holding a quarter of the mass or more
MULTI_LABEL_DEFAULT = 0.25


def default_thresholds(by_hand: Sequence[float] | None, multi_label: bool, taxonomy: Taxonomy) -> Thresholds:
    """Thresholds before any tuning: the hand-set ones (for every class too, if multi-label),
    else answer the arg-max path always (and, multi-label, other paths from 0.25)."""
    if by_hand is not None:
        _check_thresholds(by_hand)
    level1, level2 = (float(t) for t in by_hand) if by_hand is not None else (0.0, 0.0)
    if not multi_label:
        return Thresholds(level1, level2)
    extra1, extra2 = (level1, level2) if by_hand is not None else (MULTI_LABEL_DEFAULT,) * 2
    return Thresholds(
        level1, level2, np.full(len(taxonomy.categories), extra1), np.full(len(taxonomy), extra2)
    )


def _check_thresholds(values: Sequence[float]) -> None:
    if len(values) != 2 or not all(0.0 <= float(v) <= 1.0 for v in values):
        raise ConfigError(
            f"thresholds must be (level1, level2) confidences in [0, 1], got {tuple(values)!r}; "
            "e.g. thresholds=(0.5, 0.7)"
        )


def check_decision_params(
    by_hand: Sequence[float] | None, target: float | None, delta: float | None = None
) -> None:
    if by_hand is not None and target is not None:
        raise ConfigError(
            f"set thresholds=(level1, level2) by hand or target_precision=..., not both "
            f"(got thresholds={tuple(by_hand)!r} and target_precision={target!r})"
        )
    if by_hand is not None:
        _check_thresholds(by_hand)
    check_target_precision(target, delta)


def check_target_precision(target: float | None, delta: float | None = None) -> None:
    if target is not None and not 0.0 < float(target) < 1.0:
        raise ConfigError(f"target_precision must be in (0, 1), got {target!r}; e.g. 0.95")
    if delta is not None and not 0.0 < float(delta) < 1.0:
        raise ConfigError(
            f"delta (the chance a certified precision fails) must be in (0, 1), got {delta!r}; "
            "e.g. 0.1, or None for the point estimate without a guarantee"
        )


def choose_thresholds(
    scores: Scores,
    texts: Sequence[str],
    leaves: np.ndarray,
    taxonomy: Taxonomy,
    multi_label: bool,
    by_hand: Sequence[float] | None,
    target: float | None,
    delta: float | None = None,
) -> tuple[Thresholds, dict[str, LevelFit]]:
    """Thresholds from validation scores, and how each level's was fitted: by hand if given,
    else reaching ``target`` precision per level (certified at ``1 - delta``; the point estimate
    when ``delta`` is None), or per class when multi-label (F1-optimal without a target)."""
    check_target_precision(target, delta)
    if by_hand is not None or (target is None and not multi_label):
        return default_thresholds(by_hand, multi_label, taxonomy), {}
    if multi_label:
        return _multi_label_thresholds(scores, texts, leaves, taxonomy, target), {}
    return _level_thresholds(scores, leaves, np.asarray(taxonomy.leaf_category), float(target), delta)


def _level_thresholds(
    scores: Scores, leaves: np.ndarray, leaf_category: np.ndarray, target: float, delta: float | None
) -> tuple[Thresholds, dict[str, LevelFit]]:
    """Each level on its own: the lowest threshold whose answers reach ``target`` precision
    (``certified_threshold``: with probability ``1 - delta`` on new rows of this distribution).

    Level 1 is chosen over every row, not only those the level-2 threshold rejects: on a
    validation split the model nearly always gets right, the rejected rows are too few to say
    anything, while the category confidence of all rows still is.
    """
    choose = point_threshold if delta is None else certified_threshold
    bound = DecisionConfig.delta if delta is None else delta  # the bound printed beside a point estimate
    fits = {
        "level1": choose(scores.conf1, scores.categories == leaf_category[leaves], target, bound),
        "level2": choose(scores.conf2, scores.leaves == leaves, target, bound),
    }
    return Thresholds(fits["level1"].threshold, fits["level2"].threshold), fits


def _multi_label_thresholds(
    scores: Scores, texts: Sequence[str], leaves: np.ndarray, taxonomy: Taxonomy, target: float | None
) -> Thresholds:
    """Level thresholds for the arg-max path (as single-label, with "right" meaning "among the
    text's labels"; 0 without a target), and per-class thresholds for the other paths, chosen
    on the rows where that class is not the arg-max."""
    first: dict[str, int] = {}
    for i, text in enumerate(texts):
        first.setdefault(text, i)
    rows = np.array(list(first.values()))
    index = {text: k for k, text in enumerate(first)}
    position = np.array([index[t] for t in texts])
    leaf_category = np.asarray(taxonomy.leaf_category)
    leaf_pos = np.zeros((len(rows), len(taxonomy)), dtype=bool)
    leaf_pos[position, leaves] = True
    cat_pos = np.zeros((len(rows), len(taxonomy.categories)), dtype=bool)
    cat_pos[position, leaf_category[leaves]] = True
    top_leaf, top_cat = scores.leaves[rows], scores.categories[rows]
    k = np.arange(len(rows))
    level1 = level2 = 0.0
    if target is not None:
        level2 = threshold_for_precision(scores.conf2[rows], leaf_pos[k, top_leaf], target)
        level1 = threshold_for_precision(scores.conf1[rows], cat_pos[k, top_cat], target)
    per_leaf = per_class_thresholds(
        *_others(scores.P2[rows], leaf_pos, top_leaf), target, MULTI_LABEL_DEFAULT
    )
    per_cat = per_class_thresholds(*_others(scores.P1[rows], cat_pos, top_cat), target, MULTI_LABEL_DEFAULT)
    return Thresholds(level1, level2, per_cat, per_leaf)


def _others(P: np.ndarray, positives: np.ndarray, top: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels with each row's arg-max taken out (-1 never passes a threshold)."""
    k = np.arange(len(top))
    P, positives = P.copy(), positives.copy()
    P[k, top], positives[k, top] = -1.0, False
    return P, positives


# ---- what the thresholds were fitted on --------------------------------------------------
# people's labels are the only ones that can verify a threshold; "llm:<model>" and "synthetic:..."
# rows are the labeler's or the generator's guesses (shelver.data's ``source`` column)
HUMAN = "human"
# human labels of long texts are likely product titles, not queries: fashion's titles have a
# median of 6 words, WANDS's real queries 2; thresholds fitted on titles overshoot on queries
TITLE_LIKE_WORDS = 5


def median_words(texts: Sequence[str]) -> float:
    """The median number of words per text (0 for none)."""
    return float(np.median([len(t.split()) for t in texts])) if len(texts) else 0.0


def title_like(median: Any) -> bool:
    """Whether texts with this median word count read as product titles, not search queries:
    what is measured on them (thresholds, the export check) flatters short queries."""
    return isinstance(median, int | float) and median > TITLE_LIKE_WORDS


def served_rows(source: Sequence[str]) -> np.ndarray:
    """The rows that may set thresholds: the human-labeled ones when there are any, else all.

    Pseudo-labels never set a threshold when real labels exist."""
    human = np.array([s == HUMAN for s in source], dtype=bool)
    return human if human.any() else np.ones(len(source), dtype=bool)


def provenance(
    texts: Sequence[str],
    source: Sequence[str],
    used: np.ndarray,
    target: float | None,
    delta: float | None,
    fits: dict[str, LevelFit],
) -> dict[str, Any]:
    """``fitted_on``: the rows that set the temperatures and thresholds, and what they promise."""
    kept = _counts(source, used)
    return {
        "rows": int(used.sum()),
        "sources": kept,
        "left_out": _counts(source, ~used),
        "human": set(kept) == {HUMAN},
        "median_words": median_words([t for t, u in zip(texts, used, strict=True) if u]),
        "target_precision": target,
        "delta": delta if fits else None,
        "method": next(iter(fits.values())).method if fits else None,
        "levels": {level: fit.to_dict() for level, fit in fits.items()},
    }


def _counts(values: Sequence[str], mask: np.ndarray) -> dict[str, int]:
    chosen = [v for v, m in zip(values, mask, strict=True) if m]
    return {v: chosen.count(v) for v in sorted(set(chosen))}


def describe_fitted_on(fitted_on: dict[str, Any] | None) -> str:
    """One line on what the thresholds promise: the report, ``predict``, ``/v1/model`` and the
    end of ``bootstrap`` all print this."""
    if not fitted_on:
        return "thresholds unverified: not calibrated (every level answered, or thresholds set by hand)"
    if fitted_on.get("target_precision") is None:
        return f"calibrated on {fitted_on.get('rows', fitted_on.get('n', 0)):,} rows; no target precision"
    if not fitted_on.get("human"):
        sources = ", ".join(f"{n:,} {s}" for s, n in fitted_on.get("sources", {}).items())
        return (
            f"thresholds unverified: fitted on machine labels ({sources}), "
            "not people's labels of real queries"
        )
    levels = "; ".join(_level_line(k, v) for k, v in fitted_on.get("levels", {}).items())
    guarantee = f", delta {fitted_on['delta']}" if fitted_on.get("method") == "certified" else ""
    line = f"thresholds fitted on {fitted_on['rows']:,} human-labeled rows{guarantee}: {levels}"
    if title_like(fitted_on.get("median_words")):
        line += (
            f" (median {fitted_on['median_words']:.0f} words: if these are product titles, "
            "precision on short queries will be lower; calibrate on labeled queries)"
        )
    return line


def _level_line(level: str, fit: dict[str, Any]) -> str:
    name = level.replace("level", "L")
    if not fit["certified"]:
        need = fit.get("labels_needed")
        more = f"about {need:,} labeled rows would" if need else "more labels alone would not"
        return f"{name} abstains (the target is not certified on {fit['rows']:,} rows; {more})"
    what = "certified" if fit["method"] == "certified" else "point estimate"
    return (
        f"{name} {what} precision {fit['precision']:.3f} (lower bound {fit['lower_bound']:.3f}) "
        f"at coverage {fit['coverage']:.3f}"
    )


# ---- model directory form -----------------------------------------------------------------
def decisions_to_dict(
    calibration: Calibration, thresholds: Thresholds, taxonomy: Taxonomy, fitted_on: dict[str, Any] | None
) -> dict[str, Any]:
    """``calibration.json``: temperatures and thresholds keyed by names, and what they were fitted on."""
    payload: dict[str, Any] = {
        "temperature": calibration.to_dict(taxonomy.categories),
        "thresholds": {"level1": thresholds.level1, "level2": thresholds.level2},
        "fitted_on": fitted_on,
    }
    if thresholds.multi_label:
        payload["thresholds"]["per_category"] = dict(
            zip(taxonomy.categories, map(float, thresholds.per_category), strict=True)
        )
        payload["thresholds"]["per_leaf"] = {
            format_path(p): float(t) for p, t in zip(taxonomy.paths, thresholds.per_leaf, strict=True)
        }
    return payload


def decisions_from_dict(payload: dict[str, Any], taxonomy: Taxonomy) -> tuple[Calibration, Thresholds]:
    calibration = Calibration.from_dict(payload["temperature"], taxonomy.categories)
    t = payload["thresholds"]
    if "per_leaf" not in t:
        return calibration, Thresholds(float(t["level1"]), float(t["level2"]))
    per_category = np.array([t["per_category"][c] for c in taxonomy.categories], dtype=np.float64)
    per_leaf = np.array([t["per_leaf"][format_path(p)] for p in taxonomy.paths], dtype=np.float64)
    return calibration, Thresholds(float(t["level1"]), float(t["level2"]), per_category, per_leaf)
