"""Use a few hundred human labels twice, honestly: to train and to fit thresholds.

The labeled real queries (the *anchor* rows) are the best training data there is and the only
rows that can verify a threshold. Cross-fitting does both: the anchor rows are split into folds;
each fold is scored by a model trained on everything else (the other folds and the machine
labels, less every row with the same text as the fold); the out-of-fold scores fit the
temperatures and thresholds of the final model, which trains on every row. No threshold is
fitted on a score from a model that saw the row.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from shelver.calibration import HUMAN
from shelver.classifier import HierarchicalClassifier
from shelver.encoders import Encoder
from shelver.errors import DataError

# five folds: each fold model trains on 80% of the anchor rows (close to the final model's 100%)
# for five extra head fits; the embeddings are computed once and cached
FOLDS = 5


def cross_fit(
    model: HierarchicalClassifier,
    X: Sequence[str],
    y: np.ndarray,
    source: Sequence[str],
    folds: int = FOLDS,
    seed: int = 0,
) -> HierarchicalClassifier:
    """Fit ``model`` on every row, then calibrate it on the human-labeled rows' out-of-fold scores."""
    model.fit(list(X), np.asarray(y), source=list(source))
    return calibrate_out_of_fold(model, X, y, source, folds, seed)


def calibrate_out_of_fold(
    model: HierarchicalClassifier,
    X: Sequence[str],
    y: np.ndarray,
    source: Sequence[str],
    folds: int = FOLDS,
    seed: int = 0,
) -> HierarchicalClassifier:
    """Calibrate a model fitted on these rows from its human-labeled rows' out-of-fold scores:
    fold copies (same parameters and encoder cache) score each fold without having seen it."""
    texts, labels, source = list(X), np.asarray(y), [str(s) for s in source]
    anchor = np.flatnonzero([s == HUMAN for s in source])
    if len(anchor) < folds:
        raise DataError(
            f"cross-fitting needs at least {folds} human-labeled rows, got {len(anchor)}; "
            "label more queries (shelver labels import) or calibrate on a held-out split"
        )
    raw = out_of_fold_scores(model, texts, labels, source, anchor, folds, seed)
    model.calibrate_scores(raw, [texts[i] for i in anchor], labels[anchor], [HUMAN] * len(anchor))
    model.calibrated_on_["cross_fitted_folds"] = folds
    return model


def out_of_fold_scores(
    model: HierarchicalClassifier,
    texts: list[str],
    labels: np.ndarray,
    source: list[str],
    anchor: np.ndarray,
    folds: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw head probabilities of the ``anchor`` rows, each from a model that never saw its text."""
    fold_of = np.random.default_rng(seed).permutation(len(anchor)) % folds
    parts: list[tuple[np.ndarray, np.ndarray]] = []
    for k in range(folds):
        scored = anchor[fold_of == k]
        held = {texts[i] for i in scored}
        train = np.array([t not in held for t in texts])
        fold_model = fresh(model, model.encoder_).fit(
            [texts[i] for i in np.flatnonzero(train)], labels[train], _pick(source, train)
        )
        parts.append(fold_model.head_proba(fold_model.features([texts[i] for i in scored])))
    order = np.argsort(np.concatenate([np.flatnonzero(fold_of == k) for k in range(folds)]), kind="stable")
    return np.concatenate([p[0] for p in parts])[order], np.concatenate([p[1] for p in parts])[order]


def fresh(model: HierarchicalClassifier, encoder: Encoder) -> HierarchicalClassifier:
    """An unfitted copy with the same parameters, on ``encoder`` (a fitted model's, with its cache)."""
    return type(model)(**{**model.get_params(deep=False), "encoder": encoder})


def _pick(values: list[str], mask: np.ndarray) -> list[str]:
    return [v for v, keep in zip(values, mask, strict=True) if keep]
