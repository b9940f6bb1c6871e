"""Thresholds with a finite-sample guarantee: precision >= target with probability >= 1 - delta.

A threshold ``t`` answers the rows with confidence ``>= t``. On ``n`` labeled rows it answers
``a`` of them with ``h`` right. If the rows are drawn from the served distribution, ``h`` given
``a`` is binomial in the precision of the answered set, so "precision <= target" can be tested
with the binomial tail ``P(Binom(a, target) >= h)`` (the p-value; its one-sided Clopper-Pearson
form is the lower bound printed beside the point estimate).

Learn-then-Test (Angelopoulos et al., 2021) turns the tests into a threshold: test candidate
thresholds in a fixed order and keep going while each test rejects at level ``delta``; every
threshold rejected is certified, and the lowest of them answers the most. Fixed-sequence
testing controls the family-wise error at ``delta`` with no multiplicity correction, so the
chosen threshold's precision is below the target with probability at most ``delta``.

The order must not depend on the rows that are tested. A third of the labeled rows chooses it
(the candidates whose precision reaches the target there, the surest first) and the other two
thirds test it. Walking from the most confident threshold down, with no split, stops at the
first dip: on query-form traffic a title model is often sure and wrong about its most
confident queries ("shirt"), and that walk certified nothing in most grocery resamples
(benchmarks/results/real_query_confidence.md). A test needs enough answered rows to reject at
all (``a`` rows, all right, reject only when ``target ** a <= delta``: 22 rows at 0.9 / 0.1, 45
at 0.95).

Every certified threshold is at least the point estimate's (the lowest threshold whose answers
reach the target on the sample): a candidate reaches it on the selection rows, a rejected test
on the test rows, so it reaches it on all of them.
NumPy and the standard library only: the service imports this module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

# the certified walk tests one threshold per 2.5% of the sample's rows (40 tests at most)
TEST_STEP = 0.025
# the share of the labeled rows that chooses the order of the tests; the rest run them
SELECT_SHARE = 1 / 3
# an operating point answering fewer sample rows says too little to extrapolate from
MIN_ESTIMATE_ROWS = 30
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
    confidence: np.ndarray, correct: np.ndarray, target: float, delta: float, seed: int = 0
) -> LevelFit:
    """Learn-then-Test on a split: a third of the rows orders the candidate thresholds, the rest
    tests them in that order at level ``delta``; the lowest threshold rejected is certified."""
    confidence, correct = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=bool)
    select, test = _split(len(confidence), seed)
    n_min, lf, chosen = min_rows_to_certify(target, delta), _log_factorials(len(test)), NEVER
    for t in _ordered_candidates(confidence[select], correct[select], target, delta):
        answered = confidence[test] >= t
        a, h = int(answered.sum()), int(np.sum(correct[test] & answered))
        if a < n_min or binomial_tail(h, a, target, lf) > delta:
            break
        chosen = min(chosen, t)
    fit = _fit("certified", confidence[test], correct[test], chosen, delta)
    fit = replace(fit, rows=len(confidence))
    if fit.certified:
        return fit
    _, coverage, precision = _curve(confidence, correct)
    needed = labels_needed(coverage, precision, len(confidence), target, delta)
    return replace(fit, labels_needed=needed)


def _split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (select, test) rows; the same split every time for the same ``n`` and seed."""
    order = np.random.default_rng(seed).permutation(n)
    k = int(np.ceil(n * SELECT_SHARE))
    return order[:k], order[k:]


def _ordered_candidates(
    confidence: np.ndarray, correct: np.ndarray, target: float, delta: float
) -> list[float]:
    """Thresholds worth testing, most promising first, from the selection rows alone.

    The candidates are the selection curve's points every ``TEST_STEP`` of its rows whose
    precision reaches the target; they are tested in order of their Clopper-Pearson bound on
    the selection rows. A confident but wrong top of the curve (short queries a title model is
    sure of) no longer stops the walk before it starts, as a walk from the top would.
    """
    thresholds, coverage, precision = _curve(confidence, correct)
    answered = np.rint(coverage * len(confidence)).astype(int)
    points = _test_points(answered, 1)
    scored = [
        (
            precision_lower_bound(round(precision[i] * answered[i]), int(answered[i]), delta),
            coverage[i],
            i,
        )
        for i in points
        if precision[i] >= target
    ]
    return [float(thresholds[i]) for _, _, i in sorted(scored, key=lambda x: (-x[0], -x[1]))]


def _test_points(answered: np.ndarray, first: int) -> np.ndarray:
    """Indices of the curve from ``first`` answered rows, then every ``TEST_STEP`` of the rows:
    each test is a chance for the walk to stop, so fewer, better-separated tests keep more
    coverage than one per distinct confidence."""
    step = max(1, int(np.ceil(answered[-1] * TEST_STEP)))
    wanted = np.minimum(np.arange(first, answered[-1] + step, step), answered[-1])
    return np.unique(np.searchsorted(answered, wanted))


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

    For each operating point with ``MIN_ESTIMATE_ROWS`` answers, its precision shrunk towards
    1/2 (Laplace: a perfect handful is not a perfect model), the answered rows ``a`` whose
    lower bound would reach the target, over that point's coverage and the tested share of the
    rows; the fewest wins. A rough guide, not a promise. ``None``: no point of the curve reaches
    the target, so more labels alone cannot certify it.
    """
    best: int | None = None
    step = max(1, len(coverage) // 50)  # 50 operating points are plenty for an estimate
    for c, p in zip(coverage[::step], precision[::step], strict=True):
        a = c * rows
        shrunk = (p * a + 1) / (a + 2)
        if shrunk <= target or a < min(MIN_ESTIMATE_ROWS, rows):
            continue
        need = math.ceil(_answered_to_certify(shrunk, target, delta) / c / (1 - SELECT_SHARE))
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
