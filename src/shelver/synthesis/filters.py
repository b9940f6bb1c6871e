"""Filters between generation and training: length, exact and near duplicates, exact and near leaks
into valid/test, and the judge's consistency; each step counts what it removed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from shelver.config import SynthesizeStage
from shelver.encoders import Encoder
from shelver.errors import ConfigError
from shelver.synthesis.contexts import SynthRow
from shelver.synthesis.judges import Judge
from shelver.taxonomy import Path_, Taxonomy
from shelver.text_keys import word_sequence_key


@dataclass
class FilterCounts:
    """How many rows each filter removed, in the order they ran."""

    generated: int = 0
    removed: dict[str, int] = field(default_factory=dict)
    kept: int = 0

    def drop(self, reason: str, n: int) -> None:
        self.removed[reason] = self.removed.get(reason, 0) + n


@dataclass(frozen=True)
class FilterConfig:
    min_words: int = 1
    max_words: int = 6
    max_chars: int = 60
    # cosine similarity at or above which two synthetic texts of a leaf are near duplicates
    near_duplicate: float = 0.95
    # cosine similarity at or above which a synthetic text nearly matches a valid/test text
    near_leak: float = 0.92
    # the judge must rank the intended leaf within its top K; 0: no judge (the default and its
    # reason: SynthesizeStage.judge_top_k)
    judge_top_k: int = SynthesizeStage.judge_top_k


def filter_rows(
    rows: list[SynthRow],
    encoder: Encoder,
    config: FilterConfig,
    avoid: Sequence[str] = (),
    train: Sequence[str] = (),
    judge: Judge | None = None,
    taxonomy: Taxonomy | None = None,
) -> tuple[list[SynthRow], FilterCounts]:
    """Length, exact duplicates (of each other and of training texts), exact leaks, near
    duplicates, near leaks, then the judge; each step counted."""
    counts = FilterCounts(generated=len(rows))
    rows = _step(counts, "length", rows, [_length_ok(r.text, config) for r in rows])
    rows = _step(counts, "exact_duplicate", rows, _first_seen(rows, {word_sequence_key(t) for t in train}))
    avoid_keys = {word_sequence_key(t) for t in avoid}
    rows = _step(counts, "exact_leak", rows, [word_sequence_key(r.text) not in avoid_keys for r in rows])
    vectors = encoder.encode([r.text for r in rows]) if rows else np.zeros((0, encoder.dim), np.float32)
    keep = _near_duplicates(rows, vectors, config.near_duplicate)
    rows, vectors = _step(counts, "near_duplicate", rows, keep), vectors[keep]
    keep = _far_from(vectors, encoder, list(dict.fromkeys(avoid)), config.near_leak)
    rows = _step(counts, "near_leak", rows, keep)
    if judge is not None and config.judge_top_k > 0 and rows:
        rows = _step(counts, "judge", rows, _judged(rows, judge, taxonomy, config.judge_top_k))
    counts.kept = len(rows)
    return rows, counts


def _step(counts: FilterCounts, reason: str, rows: list[SynthRow], keep: Sequence[bool]) -> list[SynthRow]:
    kept = [r for r, k in zip(rows, keep, strict=True) if k]
    counts.drop(reason, len(rows) - len(kept))
    return kept


def _length_ok(text: str, config: FilterConfig) -> bool:
    n = len(text.split())
    return config.min_words <= n <= config.max_words and 0 < len(text) <= config.max_chars


def _first_seen(rows: list[SynthRow], taken: set[str]) -> list[bool]:
    keep = []
    for row in rows:
        key = word_sequence_key(row.text)
        keep.append(key not in taken)
        taken.add(key)
    return keep


def _near_duplicates(rows: list[SynthRow], vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy, per leaf: a row goes if it is at least ``threshold`` similar to a kept one."""
    keep = np.ones(len(rows), dtype=bool)
    by_path: dict[Path_, list[int]] = {}
    for i, row in enumerate(rows):
        by_path.setdefault(row.path, []).append(i)
    for members in by_path.values():
        sims = vectors[members] @ vectors[members].T
        kept: list[int] = []
        for j in range(len(members)):
            if kept and sims[j, kept].max() >= threshold:
                keep[members[j]] = False
            else:
                kept.append(j)
    return keep


def _far_from(vectors: np.ndarray, encoder: Encoder, avoid: list[str], threshold: float) -> np.ndarray:
    if not avoid or not len(vectors):
        return np.ones(len(vectors), dtype=bool)
    best = np.full(len(vectors), -1.0, dtype=np.float32)
    for start in range(0, len(avoid), 4096):
        chunk = encoder.encode(avoid[start : start + 4096])
        best = np.maximum(best, (vectors @ chunk.T).max(axis=1))
    return best < threshold


def _judged(rows: list[SynthRow], judge: Judge, taxonomy: Taxonomy | None, top_k: int) -> np.ndarray:
    if taxonomy is None:
        raise ConfigError("the judge filter needs the taxonomy to find each row's leaf")
    scores = judge.leaf_scores([r.text for r in rows])
    intended = np.array([taxonomy.leaf_index[r.path] for r in rows])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :top_k]
    return (top == intended[:, None]).any(axis=1)
