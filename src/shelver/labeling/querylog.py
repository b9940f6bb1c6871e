"""A raw search log as distinct normalized queries with counts, most frequent first.

The log is CSV, Parquet, JSONL or plain text (one query per line) with a ``text`` column and
optionally a ``count`` column (a row without one counts once). Normalizing (Unicode NFKC, lower
case, single spaces) is what makes "Red  Sneakers" and "red sneakers" one query, labeled once.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from shelver.data import read_table
from shelver.errors import DataError
from shelver.text_keys import text_key


def read_query_log(
    path: str | Path, text_column: str = "text", count_column: str = "count"
) -> list[tuple[str, int]]:
    """``[(query, count), ...]``: deduplicated, counts summed, most frequent first (ties: first seen)."""
    frame = read_table(path)
    origin = Path(path).name
    if text_column not in frame.columns:
        raise DataError(
            f"{origin} has no {text_column!r} column (columns: {', '.join(map(str, frame.columns))}); "
            f"rename the query column to {text_column!r} or pass --text-column"
        )
    counts = _counts(frame, count_column, origin)
    queries = count_queries(zip(frame[text_column].astype(str), counts, strict=True))
    if not queries:
        raise DataError(f"{origin} has no non-empty queries in column {text_column!r}")
    return queries


def count_queries(pairs: Iterable[tuple[str, int]]) -> list[tuple[str, int]]:
    """Normalize, merge duplicates (summing counts) and sort most frequent first, ties by first seen."""
    merged: dict[str, int] = {}
    for text, count in pairs:
        query = text_key(text)
        if query:
            merged[query] = merged.get(query, 0) + int(count)
    order = {q: i for i, q in enumerate(merged)}
    return sorted(merged.items(), key=lambda item: (-item[1], order[item[0]]))


def _counts(frame: pd.DataFrame, column: str, origin: str) -> pd.Series:
    if column not in frame.columns:
        return pd.Series(1, index=frame.index)
    counts = pd.to_numeric(frame[column], errors="coerce")
    bad = counts.isna() | (counts < 0)
    if bad.any():
        row = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(
            f"{origin}: row {row + 1:,} has {column!r} = {frame[column].iloc[row]!r}; "
            "counts must be non-negative integers (or drop the column: each row then counts once)"
        )
    return counts.astype(int)
