"""Transductive smoothing of the embedding labeler's answers over the log's own embeddings.

The zero-shot labeler scores each query alone against one short description per leaf. The log
itself says more: queries that win a leaf show what that leaf looks like in real traffic, and
near-identical queries should share a label. Two cheap steps use that, in NumPy only:

```
refine   each leaf vector + beta x the normalised mean embedding of the log rows it wins (one pass)
smooth   each row's distribution = the mean of the refined labeler's distributions over its
         k nearest log rows (cosine, itself included), computed in blocks: memory stays bounded
```

The distributions are the embedding backend's own: a softmax at its temperature over the
``shortlist`` most similar leaves, zero elsewhere. Rows whose label is fixed (human or LLM:
``anchors``) count as one-hot distributions of that label, in both steps, and are never changed.
On grocery (valid): zero-shot L1 / L2 0.535 / 0.375, refine + smooth (beta 3, k 30) 0.604 / 0.456.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shelver.errors import ConfigError

# rows of the similarity matrix computed at once: 1,024 x 33k floats is ~135 MB
BLOCK = 1024
# the store's source for the embedding labeler's labels, and what smoothing writes in its place
EMBEDDING_SOURCE = "embedding"
SMOOTHED_SOURCE = "embedding+smooth"


@dataclass(frozen=True)
class Smoothing:
    # weight of the log's mean embedding against the leaf's description (valid: 1 -> 0.570, 3 -> 0.577 L1)
    beta: float = 3.0
    # neighbours whose distributions are averaged (valid L1: 10 -> 0.587, 20 -> 0.595, 30 -> 0.598)
    k: int = 30
    # the embedding backend's: its shortlist size and softmax temperature
    shortlist: int = 10
    temperature: float = 0.05

    def __post_init__(self) -> None:
        if self.k < 1 or self.shortlist < 1 or self.beta < 0 or self.temperature <= 0:
            raise ConfigError(
                f"smoothing needs k >= 1, beta >= 0, shortlist >= 1 and temperature > 0; got k={self.k}, "
                f"beta={self.beta}, shortlist={self.shortlist}, temperature={self.temperature}; fix "
                "select.smooth_k / select.smooth_beta (or label.shortlist, embedding.temperature)"
            )


def shortlist_softmax(sims: np.ndarray, shortlist: int, temperature: float) -> np.ndarray:
    """``(n, leaves)``: the embedding backend's softmax over each row's ``shortlist`` best leaves."""
    k = min(shortlist, sims.shape[1])
    top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    best = np.take_along_axis(sims, top, axis=1)
    weights = np.exp((best - best.max(axis=1, keepdims=True)) / temperature)
    out = np.zeros_like(sims, dtype=np.float32)
    np.put_along_axis(out, top, weights / weights.sum(axis=1, keepdims=True), axis=1)
    return out


def with_anchors(dist: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """Rows with an anchor (a leaf index, -1: none) become one-hot on it."""
    fixed = anchors >= 0
    out = dist.copy()
    out[fixed] = 0.0
    out[np.flatnonzero(fixed), anchors[fixed]] = 1.0
    return out


def refine_leaf_vectors(
    leaf_vectors: np.ndarray, embeddings: np.ndarray, winners: np.ndarray, beta: float
) -> np.ndarray:
    """Each leaf + ``beta`` x the unit mean of the rows it wins, re-normalised (a leaf nobody wins
    keeps its description); similarities to the result stay cosines, so the temperature still fits."""
    sums = np.zeros_like(leaf_vectors, dtype=np.float64)
    np.add.at(sums, winners, embeddings)
    refined = leaf_vectors + beta * _unit(sums)
    return _unit(refined).astype(np.float32)


def nearest_mean(embeddings: np.ndarray, values: np.ndarray, k: int, block: int = BLOCK) -> np.ndarray:
    """For each row, the mean of ``values`` over its ``k`` nearest rows by cosine (itself included)."""
    unit = _unit(embeddings).astype(np.float32)
    k = min(k, len(unit))
    out = np.empty_like(values, dtype=np.float32)
    for start in range(0, len(unit), block):
        sims = unit[start : start + block] @ unit.T
        near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[start : start + block] = values[near].mean(axis=1)
    return out


def smooth(
    embeddings: np.ndarray, leaf_vectors: np.ndarray, anchors: np.ndarray, config: Smoothing
) -> np.ndarray:
    """``(n, leaves)`` smoothed label distributions of the log rows (refine, then smooth)."""
    unit = _unit(embeddings).astype(np.float32)
    first = _labeler(unit, leaf_vectors, anchors, config)
    refined = refine_leaf_vectors(leaf_vectors, unit, first.argmax(axis=1), config.beta)
    return nearest_mean(unit, _labeler(unit, refined, anchors, config), config.k)


def _labeler(unit: np.ndarray, leaves: np.ndarray, anchors: np.ndarray, config: Smoothing) -> np.ndarray:
    sims = unit @ leaves.T
    return with_anchors(shortlist_softmax(sims, config.shortlist, config.temperature), anchors)


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)
