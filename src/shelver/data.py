"""Read and write labeled data: CSV, Parquet, JSONL (and plain text for unlabeled queries).

A labeled file has a ``text`` column and either one column per taxonomy level (named as the
taxonomy names its levels) or a ``path`` column ``"Category > Subcategory"``; a ``path`` cell
may hold several paths separated by ``" | "`` (a multi-label row: it becomes one row per path,
the text repeated, which is also how identical texts with different labels arrive). An optional
``source`` column carries each row's provenance (``human``, ``llm:<model>``, ``synthetic:...``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from shelver.errors import DataError
from shelver.taxonomy import Taxonomy, parse_path

TABLE_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".ndjson", ".json")


@dataclass(frozen=True)
class LabeledData:
    """Texts, their ``(n, depth)`` label array, and where each label came from."""

    texts: list[str]
    y: np.ndarray
    source: list[str]
    origin: str
    # each row's number among the file's data rows (1-based); a multi-label cell's rows share one
    row_numbers: tuple[int, ...] = ()

    def __len__(self) -> int:
        return len(self.texts)


def read_table(path: str | Path) -> pd.DataFrame:
    """Any supported file as a frame of strings; ``NA`` stays the string ``"NA"``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".ndjson", ".json"):
            frame = pd.read_json(path, lines=suffix != ".json", dtype=False)
        elif suffix == ".csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        else:
            lines = path.read_text(encoding="utf-8").splitlines()
            frame = pd.DataFrame({"text": lines})
    except (ValueError, OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot be read as {suffix or 'text'} ({err})") from None
    if frame.empty and not len(frame.columns):
        raise DataError(f"{path} is empty: it needs a header row and at least one data row")
    return frame


WRITE_SUFFIXES = (".csv", ".parquet", ".pq", ".jsonl", ".ndjson")


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write ``frame`` as CSV, Parquet or JSONL by ``path``'s suffix; ``read_table`` reads it back.

    The file appears whole or not at all: it is written beside itself and renamed.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise DataError(f"cannot write {path.name!r}: use a .csv, .parquet or .jsonl file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    if suffix in (".parquet", ".pq"):
        frame.to_parquet(partial, index=False)
    elif suffix in (".jsonl", ".ndjson"):
        frame.to_json(partial, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_csv(partial, index=False)
    partial.replace(path)
    return path


def texts_of(frame: pd.DataFrame, origin: str, column: str = "text") -> list[str]:
    """The text column, checked: present, and no empty values."""
    if column not in frame.columns:
        raise DataError(
            f"{origin} has no {column!r} column (columns: {', '.join(map(str, frame.columns))}); "
            f"rename the column that holds the queries to {column!r}"
        )
    texts = frame[column].fillna("").astype(str).str.strip()
    empty = np.flatnonzero(texts.eq("").to_numpy())
    if len(empty):
        raise DataError(
            f"{origin}: row {empty[0] + 1:,} has an empty {column!r}"
            f"{_and_more(len(empty))}; remove empty rows or fill them in"
        )
    return texts.tolist()


def read_labeled(path: str | Path, taxonomy: Taxonomy) -> LabeledData:
    """Read a labeled file and check every row's path against the taxonomy."""
    frame = read_table(path)
    origin = Path(path).name
    if frame.empty:
        raise DataError(f"{origin} has no rows; a labeled file needs at least one")
    frame = explode_multi_label(frame, taxonomy)
    texts = texts_of(frame, origin)
    y = labels_of(frame, taxonomy, origin)
    source = frame["source"].astype(str).tolist() if "source" in frame.columns else ["human"] * len(texts)
    return LabeledData(texts, y, source, origin, tuple(frame.index.tolist()))


MULTI_SEPARATOR = "|"


def explode_multi_label(frame: pd.DataFrame, taxonomy: Taxonomy) -> pd.DataFrame:
    """One row per path of every ``"A > B | C > D"`` cell; the file's row number stays the index."""
    frame = frame.set_axis(pd.RangeIndex(1, len(frame) + 1))
    if all(level in frame.columns for level in taxonomy.levels) or "path" not in frame.columns:
        return frame
    cells = frame["path"].astype(str)
    if not cells.str.contains(MULTI_SEPARATOR, regex=False).any():
        return frame
    return frame.assign(path=cells.str.split(MULTI_SEPARATOR, regex=False)).explode("path")


def labels_of(frame: pd.DataFrame, taxonomy: Taxonomy, origin: str) -> np.ndarray:
    """``(n, depth)`` label array from level columns or a ``path`` column, validated."""
    levels = list(taxonomy.levels)
    if all(level in frame.columns for level in levels):
        y = frame[levels].fillna("").astype(str).apply(lambda c: c.str.strip()).to_numpy()
    elif "path" in frame.columns:
        y = np.array([_split_path(p, taxonomy.depth) for p in frame["path"].astype(str)], dtype=object)
    else:
        raise DataError(
            f"{origin} has no label columns: give one column per level "
            f"({', '.join(levels)}) or a 'path' column like 'Shoes > Sneakers'"
        )
    check_labels(y, taxonomy, origin, row_numbers=frame.index.to_numpy())
    return y.astype(str)


def check_labels(
    y: np.ndarray, taxonomy: Taxonomy, origin: str, row_numbers: np.ndarray | None = None
) -> None:
    """Raise on the first row whose path is not a leaf, counting the others."""
    bad = [i for i, row in enumerate(map(tuple, y)) if row not in taxonomy.leaf_index]
    if bad:
        first = bad[0]
        reason = taxonomy.explain_unknown(tuple(y[first]))
        number = int(row_numbers[first]) if row_numbers is not None else first + 1
        raise DataError(
            f"{reason} (row {number:,} of {origin}){_and_more(len(bad))}; "
            "fix the label or add the path to the taxonomy"
        )


def merge_multi_label(texts: list[str], y: np.ndarray) -> tuple[list[str], np.ndarray]:
    """One row per distinct (text, path): a text with several paths keeps one row per path,
    and repeats of the same (text, path) collapse (they would weigh that pair twice)."""
    seen = dict.fromkeys(zip(texts, map(tuple, y), strict=True))
    return [t for t, _ in seen], np.array([p for _, p in seen], dtype=str).reshape(-1, y.shape[1])


def label_sets(texts: list[str], leaves: np.ndarray) -> tuple[list[str], list[set[int]]]:
    """Distinct texts (first-seen order) and the set of leaf indices each one carries."""
    sets: dict[str, set[int]] = {}
    for text, leaf in zip(texts, leaves, strict=True):
        sets.setdefault(text, set()).add(int(leaf))
    return list(sets), list(sets.values())


def _split_path(text: str, depth: int) -> tuple[str, ...]:
    parts = parse_path(text)
    return parts if len(parts) == depth else (*parts, *[""] * (depth - len(parts)))[:depth]


def _and_more(count: int) -> str:
    return f" (and {count - 1:,} more like it)" if count > 1 else ""


def read_queries(path: str | Path | None, column: str = "text") -> list[str]:
    """Queries to classify: a table with a ``text`` column, a text file, or stdin (``None``)."""
    import sys

    if path is None or str(path) == "-":
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    frame = read_table(path)
    if Path(path).suffix.lower() in TABLE_SUFFIXES:
        return texts_of(frame, Path(path).name, column)
    return [t for t in frame["text"].tolist() if t.strip()]
