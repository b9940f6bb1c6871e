"""Label consistency: rows whose texts (nearly) repeat each other but carry different labels.

A model is surest of texts that repeat what it was trained on. Where the data labels such repeats
differently, no model answers them at a high precision, and no threshold fixes it: the labels, or
the taxonomy, need a look. ``find_twins`` pairs each row with its nearest other row by cosine
(its *twin*, when the cosine reaches ``min_similarity``) and reports the twins whose labels differ.

A row's twin is never another row of the same multi-label cell (``"A > B | C > D"``): those
labels are meant to differ.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from shelver.errors import DataError
from shelver.taxonomy import format_path
from shelver.text_keys import text_key, word_set_key

# similarities held at once (float32): 64 MB, whatever the number of rows; the work is quadratic
# in the rows (~40 s for 43,000 on 2 cores, after encoding them), so check a sample of a larger file
BUDGET = 1 << 24
# beyond this many rows, every pair would take hours on a few cores: check a sample instead
MAX_ROWS = 200_000


@dataclass(frozen=True)
class Twins:
    """The rows checked, how many have a twin, how many twins agree, and the disagreeing pairs."""

    rows: int
    with_twin: int
    agreeing: int
    conflicts: pd.DataFrame  # one row per disagreeing pair, most similar first

    @property
    def agreement(self) -> float:
        return self.agreeing / self.with_twin if self.with_twin else float("nan")

    def label_pairs(self, top: int = 10) -> list[tuple[str, str, int]]:
        """The most frequent (path, twin's path) pairs in disagreement, either order counted once."""
        pairs = Counter(
            tuple(sorted(p)) for p in zip(self.conflicts.path, self.conflicts.twin_path, strict=True)
        )
        return [(a, b, n) for (a, b), n in pairs.most_common(top)]


def find_twins(
    texts: list[str],
    paths: list[tuple[str, ...]],
    vectors: np.ndarray,
    origins: list[str],
    min_similarity: float,
) -> Twins:
    """``origins``: each row's ``file:row``; rows with the same origin are never twins."""
    twin, similarity = nearest_other(vectors, np.unique(origins, return_inverse=True)[1])
    has = np.flatnonzero(similarity >= min_similarity)
    differ = has[[paths[i] != paths[twin[i]] for i in has]]
    pairs = {(min(i, int(twin[i])), max(i, int(twin[i]))): float(similarity[i]) for i in differ}
    return Twins(len(texts), len(has), len(has) - len(differ), _pairs_frame(pairs, texts, paths, origins))


def _pairs_frame(
    pairs: dict[tuple[int, int], float], texts: list[str], paths: list[tuple[str, ...]], origins: list[str]
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "similarity": [round(s, 4) for s in pairs.values()],
            "kind": [_kind(texts[i], texts[j]) for i, j in pairs],
            "text": [texts[i] for i, _ in pairs],
            "path": [format_path(paths[i]) for i, _ in pairs],
            "origin": [origins[i] for i, _ in pairs],
            "twin_text": [texts[j] for _, j in pairs],
            "twin_path": [format_path(paths[j]) for _, j in pairs],
            "twin_origin": [origins[j] for _, j in pairs],
        }
    )
    return frame.sort_values("similarity", ascending=False, kind="stable").reset_index(drop=True)


def rows_to_check(rows: int, sample: int | None, seed: int = 0) -> np.ndarray:
    """All row indices, or ``sample`` of them drawn at random (in file order)."""
    if sample is not None:
        return np.sort(np.random.default_rng(seed).choice(rows, min(sample, rows), replace=False))
    if rows > MAX_ROWS:
        raise DataError(
            f"{rows:,} labeled rows: comparing every pair would take hours; "
            f"pass --sample {MAX_ROWS // 2:,} to check a random sample of them"
        )
    return np.arange(rows)


def nearest_other(vectors: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's most similar row by cosine outside its own group, and that cosine (-inf: none)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
    best, sims = np.zeros(len(unit), np.intp), np.full(len(unit), -np.inf, np.float32)
    block = max(1, BUDGET // max(len(unit), 1))
    for start in range(0, len(unit), block):
        scores = unit[start : start + block] @ unit.T
        scores[groups[start : start + block, None] == groups[None, :]] = -np.inf
        best[start : start + block] = scores.argmax(axis=1)
        sims[start : start + block] = scores.max(axis=1)
    return best, sims


def _kind(a: str, b: str) -> str:
    if text_key(a) == text_key(b):
        return "same text"
    return "same words" if word_set_key(a) == word_set_key(b) else "similar"
