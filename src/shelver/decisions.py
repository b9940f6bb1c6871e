"""What the model answers for one query: the full path, the category alone, several paths, or
nothing, with the reason. NumPy only (the service imports this without sklearn or torch).

Single-label back-off, in this order: keep the subcategory if its joint confidence reaches the
level-2 threshold; else keep the category if its confidence reaches the level-1 threshold;
else abstain. Multi-label: the same for the arg-max path, plus every other leaf whose
confidence reaches its own class threshold; if no leaf is answered, the categories likewise;
else abstain.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from shelver.taxonomy import Taxonomy

FULL, CATEGORY, ABSTAIN = "full", "category", "abstain"
DECISIONS = (FULL, CATEGORY, ABSTAIN)


@dataclass(frozen=True)
class Prediction:
    """The answer for one text.

    ``path`` has one entry per level, ``""`` where the level was withheld. ``confidence`` is the
    calibrated confidence of the best candidate at each level (``confidence[1]`` is the joint
    probability of the whole path; it never exceeds ``confidence[0]``, except for a calibrated
    flat head, whose levels have a temperature each), given even when the level was withheld.
    ``candidate`` is the best full path, answered or not. ``paths`` holds every answered path
    (several for a multi-label model; empty when abstaining).
    """

    text: str
    path: tuple[str, ...]
    confidence: tuple[float, ...]
    decision: str = FULL
    reason: str = ""
    paths: tuple[tuple[str, ...], ...] = ()
    candidate: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "path": list(self.path),
            "confidence": [round(c, 6) for c in self.confidence],
            "decision": self.decision,
            "reason": self.reason,
            "paths": [list(p) for p in self.paths],
            "candidate": list(self.candidate or self.path),
        }


@dataclass(frozen=True)
class Thresholds:
    """Level thresholds, and for multi-label models one threshold per category and per leaf."""

    level1: float = 0.0
    level2: float = 0.0
    per_category: np.ndarray | None = None
    per_leaf: np.ndarray | None = None

    @property
    def multi_label(self) -> bool:
        return self.per_leaf is not None


@dataclass(frozen=True)
class Scores:
    """Raw and calibrated ``(P1, P2)`` of n texts, the arg-max path (decoded from the raw
    probabilities) and its calibrated confidence at each level."""

    raw: tuple[np.ndarray, np.ndarray]
    P1: np.ndarray
    P2: np.ndarray
    categories: np.ndarray
    leaves: np.ndarray
    conf1: np.ndarray
    conf2: np.ndarray


# ---- single label -------------------------------------------------------------------------
def decide(conf1: np.ndarray, conf2: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Decision code per row: 0 full, 1 category only, 2 abstain (index into ``DECISIONS``)."""
    full = conf2 >= thresholds.level2
    category = ~full & (conf1 >= thresholds.level1)
    return np.where(full, 0, np.where(category, 1, 2))


def withhold(paths: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``(n, 2)`` paths with ``""`` at the levels each decision withholds."""
    out = np.array(paths, dtype=object)
    out[codes >= 1, 1] = ""
    out[codes == 2, 0] = ""
    return out.astype(str)


def reason(code: int, conf1: float, conf2: float, thresholds: Thresholds) -> str:
    sub = f"subcategory confidence {conf2:.3f} {'>=' if code == 0 else '<'} {thresholds.level2:.3f}"
    if code == 0:
        return sub
    cat = f"category confidence {conf1:.3f} {'>=' if code == 1 else '<'} {thresholds.level1:.3f}"
    return f"{sub}; {cat}"


def single_label_predictions(
    texts: list[str], paths: np.ndarray, conf1: np.ndarray, conf2: np.ndarray, thresholds: Thresholds
) -> list[Prediction]:
    codes = decide(conf1, conf2, thresholds)
    answered = withhold(paths, codes)
    out = []
    for i, text in enumerate(texts):
        path, code = tuple(str(p) for p in answered[i]), int(codes[i])
        out.append(
            Prediction(
                text,
                path,
                (float(conf1[i]), float(conf2[i])),
                DECISIONS[code],
                reason(code, float(conf1[i]), float(conf2[i]), thresholds),
                (path,) if code < 2 else (),
                tuple(str(p) for p in paths[i]),
            )
        )
    return out


# ---- multi label --------------------------------------------------------------------------
def label_sets(scores: Scores, thresholds: Thresholds) -> tuple[list[np.ndarray], np.ndarray]:
    """Per row, the answered indices (leaves, or categories when no leaf passes), best first,
    and the decision code of the row.

    A leaf is answered when it reaches its own class threshold, or when it is the arg-max path
    and reaches the level-2 threshold (the single-label rule); categories likewise at level 1.
    """
    rows = np.arange(len(scores.leaves))
    leaf_ok = np.greater_equal(scores.P2, thresholds.per_leaf)
    leaf_ok[rows, scores.leaves] |= scores.conf2 >= thresholds.level2
    cat_ok = np.greater_equal(scores.P1, thresholds.per_category)
    cat_ok[rows, scores.categories] |= scores.conf1 >= thresholds.level1
    codes = np.where(leaf_ok.any(axis=1), 0, np.where(cat_ok.any(axis=1), 1, 2))
    sets = []
    for i, code in enumerate(codes):
        values, ok = (scores.P2[i], leaf_ok[i]) if code == 0 else (scores.P1[i], cat_ok[i])
        chosen = np.flatnonzero(ok)
        sets.append(chosen[np.argsort(-values[chosen], kind="stable")])
    return sets, codes


def multi_label_reason(code: int, n: int) -> str:
    if code == 0:
        return f"{n} path(s) at or above their class thresholds"
    if code == 1:
        return f"no subcategory reaches its threshold; {n} categor{'y' if n == 1 else 'ies'} do"
    return "no subcategory or category reaches its threshold"


def answered_paths(
    scores: Scores, thresholds: Thresholds, taxonomy: Taxonomy
) -> tuple[list[list[tuple[str, ...]]], np.ndarray]:
    """Per row, the answered paths best first (``(category, "")`` when only categories pass),
    and the row's decision code."""
    sets, codes = label_sets(scores, thresholds)
    categories, paths = taxonomy.categories, taxonomy.paths
    answered = [
        [paths[j] if code == 0 else (categories[j], "") for j in chosen]
        for chosen, code in zip(sets, codes, strict=True)
    ]
    return answered, codes


def multi_label_predictions(
    texts: list[str], scores: Scores, thresholds: Thresholds, taxonomy: Taxonomy
) -> list[Prediction]:
    """One ``Prediction`` per text of a multi-label model: ``path`` is the best answered path,
    ``paths`` every answered one."""
    answered, codes = answered_paths(scores, thresholds, taxonomy)
    out = []
    for i, text in enumerate(texts):
        code, paths = int(codes[i]), answered[i]
        path = paths[0] if paths else ("", "")
        confidence = (float(scores.conf1[i]), float(scores.conf2[i]))
        candidate = taxonomy.paths[scores.leaves[i]]
        reason = multi_label_reason(code, len(paths))
        out.append(Prediction(text, path, confidence, DECISIONS[code], reason, tuple(paths), candidate))
    return out
