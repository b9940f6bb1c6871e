"""Thresholds with a finite-sample guarantee: precision >= target with probability >= 1 - delta.

A threshold ``t`` answers the rows with confidence ``>= t``. On ``n`` labeled rows it answers
``a`` of them with ``h`` right. If the rows are drawn from the served distribution, ``h`` given
``a`` is binomial in the precision of the answered set, so "precision <= target" can be tested
with the binomial tail ``P(Binom(a, target) >= h)`` (the p-value; its one-sided Clopper-Pearson
form is the lower bound printed beside the point estimate).

Learn-then-Test (Angelopoulos et al., 2021) turns the tests into a threshold: walk the
thresholds from the most confident down, in a fixed order, and keep going while each test
rejects at level ``delta``; the last one rejected is certified. Fixed-sequence testing controls
the family-wise error at ``delta`` with no multiplicity correction, so the chosen threshold's
precision is below the target with probability at most ``delta``.

The walk starts at the first threshold that answers enough rows to reject at all (``a`` rows,
all right, reject only when ``target ** a <= delta``: 22 rows at 0.9 / 0.1, 45 at 0.95). Where
that start depends on the data it depends on the confidences only, never on the labels.

Every certified threshold is at least the point estimate's (the lowest threshold whose answers
reach the target on the sample): a rejected test needs the sample precision above the target.
NumPy and the standard library only: the service imports this module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# the certified walk tests one threshold per 2.5% of the sample's rows (40 tests at most)
TEST_STEP = 0.025
# an operating point answering fewer sample rows says too little to extrapolate from
MIN_ESTIMATE_ROWS = 10
# above every confidence: the level always abstains
NEVER = float(np.nextafter(1.0, 2.0))


def _log_factorials(n: int) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))])


def binomial_tail(hits: int, n: int, p: float, log_fact: np.ndarray | None = None) -> float:
    """``P(Binom(n, p) >= hits)``, exactly (a log-space sum over the tail)."""
    if hits <= 0:
        return 1.0
    if hits > n:
        return 0.0
    if p <= 0.0 or p >= 1.0:
        return float(p >= 1.0)
    lf = _log_factorials(n) if log_fact is None else log_fact
    k = np.arange(hits, n + 1)
    log_pmf = lf[n] - lf[k] - lf[n - k] + k * math.log(p) + (n - k) * math.log1p(-p)
    top = log_pmf.max()
    return float(min(1.0, math.exp(top) * np.exp(log_pmf - top).sum()))


def precision_lower_bound(hits: int, n: int, delta: float) -> float:
    """One-sided Clopper-Pearson: the lowest precision not rejected at level ``delta``."""
    if n == 0 or hits == 0:
        return 0.0
    lf, lo, hi = _log_factorials(n), 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if binomial_tail(hits, n, mid, lf) <= delta else (lo, mid)
    return lo


def min_rows_to_certify(target: float, delta: float) -> int:
    """Answered rows needed before any test can reject: all right, ``target ** a <= delta``."""
    return math.ceil(math.log(delta) / math.log(target))


@dataclass(frozen=True)
class LevelFit:
    """What a level's threshold was chosen on, and what it promises.

    ``precision`` is the point estimate on the sample, ``lower_bound`` the certified precision
    at ``1 - delta`` (Clopper-Pearson; 0 when nothing is answered). ``labels_needed`` estimates
    how many labeled rows would certify the target, when this sample could not.
    """

    method: str
    threshold: float
    rows: int
    answered: int
    coverage: float
    precision: float
    lower_bound: float
    certified: bool
    labels_needed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def point_threshold(confidence: np.ndarray, correct: np.ndarray, target: float, delta: float) -> LevelFit:
    """The lowest threshold whose answers reach ``target`` on the sample (no guarantee)."""
    return _fit("point", confidence, correct, threshold_for_precision(confidence, correct, target), delta)


def certified_threshold(
    confidence: np.ndarray, correct: np.ndarray, target: float, delta: float
) -> LevelFit:
    """Learn-then-Test: the lowest threshold reached by fixed-sequence tests at level ``delta``."""
    thresholds, coverage, precision = _curve(confidence, correct)
    answered = np.rint(coverage * len(confidence)).astype(int)
    hits = np.rint(precision * answered).astype(int)
    lf, chosen = _log_factorials(len(confidence)), NEVER
    for i in _test_points(answered, min_rows_to_certify(target, delta)):
        if binomial_tail(int(hits[i]), int(answered[i]), target, lf) > delta:
            break
        chosen = float(thresholds[i])
    fit = _fit("certified", confidence, correct, chosen, delta)
    if fit.certified:
        return fit
    needed = labels_needed(coverage, precision, len(confidence), target, delta)
    return LevelFit(**{**fit.to_dict(), "labels_needed": needed})


def _test_points(answered: np.ndarray, first: int) -> np.ndarray:
    """Indices of the curve to test, most confident first: from ``first`` answered rows, then
    every ``TEST_STEP`` of the rows more. Each test is a chance for the walk to stop, so fewer,
    better-separated tests keep more coverage than one per distinct confidence."""
    step = max(1, int(np.ceil(answered[-1] * TEST_STEP))) if len(answered) else 1
    wanted = np.arange(first, answered[-1] + step, step) if len(answered) else np.array([], int)
    points = np.searchsorted(answered, np.minimum(wanted, answered[-1] if len(answered) else 0))
    return np.unique(points[points < len(answered)])


def _fit(
    method: str, confidence: np.ndarray, correct: np.ndarray, threshold: float, delta: float
) -> LevelFit:
    answered = confidence >= threshold
    a, h = int(answered.sum()), int(np.sum(np.asarray(correct, dtype=bool) & answered))
    return LevelFit(
        method,
        threshold,
        len(confidence),
        a,
        a / max(len(confidence), 1),
        h / a if a else 1.0,
        precision_lower_bound(h, a, delta),
        threshold < NEVER,
    )


def labels_needed(
    coverage: np.ndarray, precision: np.ndarray, rows: int, target: float, delta: float
) -> int | None:
    """About how many labeled rows would certify ``target``, if the precision curve held.

    For each operating point above the target, the answered rows ``a`` whose Clopper-Pearson
    bound reaches it, over that point's coverage; the fewest wins. ``None``: no point of the
    curve reaches the target, so more labels alone cannot certify it.
    """
    best: int | None = None
    step = max(1, len(coverage) // 50)  # 50 operating points are plenty for an estimate
    for c, p in zip(coverage[::step], precision[::step], strict=True):
        if p <= target or c * rows < MIN_ESTIMATE_ROWS:
            continue
        need = math.ceil(_answered_to_certify(float(p), target, delta) / c)
        best = need if best is None else min(best, need)
    return best


def _answered_to_certify(p: float, target: float, delta: float) -> int:
    """About how many answered rows at precision ``p`` put its lower bound at ``target``
    (the normal approximation to the binomial: an estimate, as its callers say)."""
    z = _normal_quantile(1 - delta)
    return max(min_rows_to_certify(target, delta), math.ceil(z * z * p * (1 - p) / (p - target) ** 2))


def _normal_quantile(q: float) -> float:
    lo, hi = -10.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * math.erfc(-mid / math.sqrt(2)) < q else (lo, mid)
    return (lo + hi) / 2


def precision_curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(thresholds, coverage, precision)`` for answering every row with ``confidence >= t``.

    One point per distinct confidence, from the highest threshold (fewest answers) down.
    """
    order = np.argsort(-confidence, kind="stable")
    conf, hits = confidence[order], np.cumsum(np.asarray(correct, dtype=np.float64)[order])
    if len(conf) == 0:
        return np.array([1.0]), np.array([0.0]), np.array([1.0])
    last_of_tie = np.r_[conf[1:] != conf[:-1], True]
    answered = np.flatnonzero(last_of_tie) + 1
    return conf[answered - 1], answered / len(conf), hits[answered - 1] / answered


def threshold_for_precision(confidence: np.ndarray, correct: np.ndarray, target: float) -> float:
    """The lowest threshold whose answers reach ``target`` precision (most coverage).

    Nothing reaches it: a threshold above every confidence, so the level always abstains.
    """
    thresholds, _, precision = precision_curve(confidence, correct)
    ok = np.flatnonzero(precision >= target)
    return float(thresholds[ok[-1]]) if len(ok) else NEVER


def _curve(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, ...]:
    return precision_curve(np.asarray(confidence, dtype=np.float64), np.asarray(correct))
