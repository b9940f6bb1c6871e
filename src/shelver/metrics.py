"""Per-level accuracy and macro-F1, tail macro-F1 and hierarchical F1.

Labels are ``(n, 2)`` string arrays; ``""`` at a level means "no answer at this level"
(back-off), which counts as wrong for accuracy at that level and adds nothing to the
predicted set of hierarchical F1.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import f1_score

# subcategories with fewer training rows than this form the tail (the definition)
TAIL_THRESHOLD = 50
# subcategories with at least this many training rows form the head; between the two, the torso
HEAD_THRESHOLD = 500
BANDS = ("head", "torso", "tail")


def leaf_names(y: np.ndarray) -> np.ndarray:
    """``["Shoes", "Sneakers"]`` rows -> ``"Shoes > Sneakers"``: leaves are paths, not names."""
    return np.array([" > ".join(p for p in row if p) for row in y])


def macro_f1(truth: Sequence[str], predicted: Sequence[str], labels: Sequence[str] | None = None) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # absent classes score 0, as documented, without noise
        return float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0))


def hierarchical_f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    """Set-based hF1 (Kiritchenko et al.): overlap of the ancestor-inclusive label sets."""
    overlap = n_pred = n_true = 0
    for t, p in zip(truth, predicted, strict=True):
        true_set = {tuple(t[: i + 1]) for i in range(len(t)) if t[i]}
        pred_set = {tuple(p[: i + 1]) for i in range(len(p)) if p[i]}
        overlap += len(true_set & pred_set)
        n_pred += len(pred_set)
        n_true += len(true_set)
    precision = overlap / n_pred if n_pred else 0.0
    recall = overlap / n_true if n_true else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def tail_leaves(train_counts: dict[str, int], threshold: int = TAIL_THRESHOLD) -> list[str]:
    return [leaf for leaf, n in train_counts.items() if n < threshold]


def band_of(train_count: int, tail: int = TAIL_THRESHOLD, head: int = HEAD_THRESHOLD) -> str:
    """``head`` (>= ``head`` training rows), ``tail`` (< ``tail``) or ``torso`` (between)."""
    return "head" if train_count >= head else "tail" if train_count < tail else "torso"


def band_metrics(
    truth: np.ndarray, predicted: np.ndarray, train_counts: dict[str, int]
) -> dict[str, dict[str, object]]:
    """L2 accuracy and macro-F1 of the rows whose true subcategory is in each frequency band."""
    true_leaf, pred_leaf = leaf_names(truth), leaf_names(predicted)
    bands = np.array([band_of(train_counts.get(leaf, 0)) for leaf in true_leaf])
    out: dict[str, dict[str, object]] = {}
    for band in BANDS:
        rows = bands == band
        if not rows.any():
            continue
        labels = sorted(set(true_leaf[rows]))
        out[band] = {
            "n": int(rows.sum()),
            "n_classes": len(labels),
            "accuracy": float(np.mean(true_leaf[rows] == pred_leaf[rows])),
            "macro_f1": macro_f1(true_leaf, pred_leaf, labels=labels),
        }
    return out


def classification_metrics(
    truth: np.ndarray, predicted: np.ndarray, train_counts: dict[str, int]
) -> dict[str, object]:
    """The headline numbers of ``metrics.json``."""
    true_leaf, pred_leaf = leaf_names(truth), leaf_names(predicted)
    tail = sorted(set(tail_leaves(train_counts)) & set(true_leaf))
    return {
        "n": len(truth),
        "level1": {
            "accuracy": float(np.mean(truth[:, 0] == predicted[:, 0])),
            "macro_f1": macro_f1(truth[:, 0], predicted[:, 0]),
        },
        "level2": {
            "accuracy": float(np.mean(true_leaf == pred_leaf)),
            "macro_f1": macro_f1(true_leaf, pred_leaf),
            "tail_macro_f1": macro_f1(true_leaf, pred_leaf, labels=tail) if tail else None,
            "n_tail_classes": len(tail),
        },
        "hierarchical_f1": hierarchical_f1(truth, predicted),
    }


def per_class(truth: np.ndarray, predicted: np.ndarray, train_counts: dict[str, int]) -> list[dict]:
    """Support, training count, precision, recall and F1 of every leaf seen in the truth."""
    true_leaf, pred_leaf = leaf_names(truth), leaf_names(predicted)
    rows = []
    for leaf in sorted(set(true_leaf)):
        tp = int(np.sum((true_leaf == leaf) & (pred_leaf == leaf)))
        support, claimed = int(np.sum(true_leaf == leaf)), int(np.sum(pred_leaf == leaf))
        precision = tp / claimed if claimed else 0.0
        recall = tp / support
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append(
            {
                "subcategory": leaf,
                "support": support,
                "train_count": train_counts.get(leaf, 0),
                "precision": precision,
                "recall": recall,
                "f1": f1,
            }
        )
    return rows


def confused_pairs(truth: np.ndarray, predicted: np.ndarray, top: int = 15) -> list[dict]:
    """The most frequent (true, predicted) leaf pairs among the errors."""
    true_leaf, pred_leaf = leaf_names(truth), leaf_names(predicted)
    wrong = true_leaf != pred_leaf
    pairs, counts = (
        np.unique(np.stack([true_leaf[wrong], pred_leaf[wrong]], axis=1), axis=0, return_counts=True)
        if wrong.any()
        else (np.empty((0, 2)), np.empty(0))
    )
    order = np.argsort(-counts, kind="stable")[:top]
    return [{"true": str(pairs[i][0]), "predicted": str(pairs[i][1]), "count": int(counts[i])} for i in order]


def per_group_accuracy(truth: np.ndarray, predicted: np.ndarray) -> list[dict]:
    """Level-2 accuracy inside each true category, with its count."""
    rows = []
    for category in sorted(set(truth[:, 0])):
        mask = truth[:, 0] == category
        correct = np.all(truth[mask] == predicted[mask], axis=1)
        rows.append({"category": category, "n": int(mask.sum()), "accuracy": float(correct.mean())})
    return rows


# ---- confidence: selective prediction and calibration ----------------------------------------
PRECISION_TARGETS = (0.9, 0.95, 0.99)
ECE_BINS = 15


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> dict[str, list[float]]:
    """Answering the most confident rows first: coverage, risk (1 - precision) and threshold."""
    from shelver.certify import precision_curve

    thresholds, coverage, precision = precision_curve(confidence, correct)
    return {"threshold": thresholds.tolist(), "coverage": coverage.tolist(), "risk": (1 - precision).tolist()}


def hierarchical_risk_coverage(
    conf1: np.ndarray, conf2: np.ndarray, right1: np.ndarray, right2: np.ndarray, points: int = 200
) -> dict[str, Any]:
    """Back-off along the taxonomy with one threshold ``t`` for both levels: the full path when
    its confidence reaches ``t``, else the category when its does, else abstain.

    Coverage is the share of levels answered (a full path 1, a category 1/2); risk the share of
    answered levels that are wrong. The curve over ``points`` thresholds (quantiles of the
    confidences), and its area (AURC, lower is better), after Goren et al., "Hierarchical
    Selective Classification" (NeurIPS 2024).
    """
    grid = np.unique(np.quantile(np.r_[conf1, conf2], np.linspace(0, 1, points)))[::-1]
    right1, right2 = np.asarray(right1, dtype=np.int64), np.asarray(right2, dtype=np.int64)
    full = conf2[None, :] >= grid[:, None]
    category = ~full & (conf1[None, :] >= grid[:, None])
    levels = 2 * full.sum(axis=1) + category.sum(axis=1)
    right = (full * (right1 + right2)[None, :] + category * right1[None, :]).sum(axis=1)
    coverage = levels / max(2 * len(conf1), 1)
    risk = np.where(levels > 0, 1 - right / np.maximum(levels, 1), 0.0)
    area = float(np.sum(np.diff(coverage) * (risk[1:] + risk[:-1]) / 2))
    return {"threshold": grid.tolist(), "coverage": coverage.tolist(), "risk": risk.tolist(), "aurc": area}


def coverage_at_precision(
    confidence: np.ndarray, correct: np.ndarray, targets: Sequence[float] = PRECISION_TARGETS
) -> dict[str, float]:
    """The largest share of rows answerable at each precision (thresholds set on these rows)."""
    from shelver.certify import precision_curve

    _, coverage, precision = precision_curve(confidence, correct)
    out = {}
    for target in targets:
        ok = precision >= target
        out[str(target)] = float(coverage[ok].max()) if ok.any() else 0.0
    return out


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[dict]:
    """Equal-width confidence bins: count, mean confidence and accuracy of each non-empty one."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    rows = []
    for b in range(bins):
        mask = index == b
        if mask.any():
            rows.append(
                {
                    "low": float(edges[b]),
                    "high": float(edges[b + 1]),
                    "n": int(mask.sum()),
                    "confidence": float(confidence[mask].mean()),
                    "accuracy": float(np.mean(correct[mask])),
                }
            )
    return rows


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over equal-width bins."""
    if len(confidence) == 0:
        return 0.0
    table = reliability(confidence, correct, bins)
    return float(sum(r["n"] * abs(r["confidence"] - r["accuracy"]) for r in table) / len(confidence))


def selective_metrics(confidence: np.ndarray, correct: np.ndarray, answered: np.ndarray) -> dict[str, float]:
    """At the model's operating thresholds: share answered, and accuracy on what was answered."""
    n = max(int(answered.sum()), 1)
    return {
        "coverage": float(answered.mean()) if len(answered) else 0.0,
        "selective_accuracy": float(np.sum(correct & answered) / n) if answered.any() else 1.0,
        "answered": int(answered.sum()),
    }


# ---- multi-label ------------------------------------------------------------------------------
def example_f1(truth: Sequence[set], predicted: Sequence[set]) -> float:
    """Example-based F1: per text 2|T ∩ P| / (|T| + |P|), averaged (an empty answer scores 0)."""
    scores = [
        2 * len(t & p) / (len(t) + len(p)) if t or p else 1.0 for t, p in zip(truth, predicted, strict=True)
    ]
    return float(np.mean(scores)) if scores else 0.0


def subset_accuracy(truth: Sequence[set], predicted: Sequence[set]) -> float:
    """Share of texts whose predicted set is exactly the true set."""
    return float(np.mean([t == p for t, p in zip(truth, predicted, strict=True)])) if truth else 0.0


def multi_label_metrics(truth: Sequence[set], predicted: Sequence[set]) -> dict[str, float]:
    answered = [p for p in predicted if p]
    precision = [len(t & p) / len(p) for t, p in zip(truth, predicted, strict=True) if p]
    return {
        "n_texts": len(truth),
        "n_multi_label_texts": sum(len(t) > 1 for t in truth),
        "example_f1": example_f1(truth, predicted),
        "subset_accuracy": subset_accuracy(truth, predicted),
        "coverage": len(answered) / len(truth) if truth else 0.0,
        "example_precision_answered": float(np.mean(precision)) if precision else 1.0,
        "mean_paths_answered": float(np.mean([len(p) for p in answered])) if answered else 0.0,
    }
