"""Is live traffic still the traffic the thresholds were fitted on? NumPy only (the service uses it).

At calibration, the confidences of the calibration rows and the decisions they got are kept as
a *reference* (``calibration.json``, under ``fitted_on``). The service counts the same
histogram over live queries; the population stability index (PSI) between the two, and the
live answered share against the reference's, say when traffic has moved away from what the
thresholds promise. The usual reading of PSI: below 0.1 stable, 0.1-0.25 a shift to watch,
above 0.25 a shift that voids the calibration (recalibrate on labeled recent queries).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# 20 equal-width bins: fine enough to see a shift, coarse enough that 300 calibration rows
# fill most of them (a PSI over near-empty bins is noise)
EDGES = tuple(round(i / 20, 2) for i in range(1, 21))
DECISION_NAMES = ("full", "category", "abstain")
# an empty bin counts as this share, so log(live / reference) stays finite
_FLOOR = 1e-4


def bin_counts(confidence: np.ndarray) -> list[int]:
    """Counts per bin of ``EDGES`` (upper edges; the last bin holds 1.0)."""
    index = np.clip(np.searchsorted(EDGES, np.asarray(confidence, dtype=np.float64), side="left"), 0, 19)
    return np.bincount(index, minlength=len(EDGES)).astype(int).tolist()


def reference(conf1: np.ndarray, conf2: np.ndarray, codes: np.ndarray) -> dict[str, Any]:
    """The calibration rows' confidence histograms per level and their decision shares."""
    n = max(len(codes), 1)
    return {
        "edges": list(EDGES),
        "level1": bin_counts(conf1),
        "level2": bin_counts(conf2),
        "decisions": {name: float(np.sum(codes == i) / n) for i, name in enumerate(DECISION_NAMES)},
    }


def psi(expected: list[int] | np.ndarray, live: list[int] | np.ndarray) -> float:
    """Population stability index of ``live`` bin counts against ``expected`` (0: the same)."""
    e, a = np.asarray(expected, dtype=np.float64), np.asarray(live, dtype=np.float64)
    if e.sum() == 0 or a.sum() == 0:
        return 0.0
    e, a = np.maximum(e / e.sum(), _FLOOR), np.maximum(a / a.sum(), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))
