"""Which leaves need synthetic rows, and what a generator knows of each: its path, attribute values
and real titles (``ClassContext``); ``SynthRow`` is what a generator's query becomes."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from shelver.errors import DataError
from shelver.taxonomy import Path_, Taxonomy, format_path

# columns of a training file that are never attributes
NOT_ATTRIBUTES = {"text", "path", "source", "split", "id", "count", "masterCategory"}
# an extra column with more distinct values than this is an identifier or free text, not an attribute
MAX_ATTRIBUTE_VALUES = 60
# values that mean "unknown" in the shared data sets
MISSING_VALUES = {"", "na", "nan", "none", "null", "n/a", "-", "other", "unknown"}
# Shopify attributes that apply to most physical products (the files hold no category mapping)
SHOPIFY_ATTRIBUTES = ("color", "pattern", "material")


@dataclass(frozen=True)
class SynthRow:
    text: str
    path: Path_
    source: str


@dataclass
class ClassContext:
    """One leaf as a generator sees it."""

    path: Path_
    count: int
    attributes: dict[str, list[str]] = field(default_factory=dict)
    titles: list[str] = field(default_factory=list)


def leaf_counts(taxonomy: Taxonomy, y: np.ndarray) -> dict[Path_, int]:
    """Training rows per leaf, zero for leaves that have none."""
    counts = Counter(map(tuple, y))
    return {p: int(counts.get(p, 0)) for p in taxonomy.paths}


def tail_paths(taxonomy: Taxonomy, y: np.ndarray, min_examples: int) -> list[Path_]:
    """Leaves with fewer than ``min_examples`` training rows, in taxonomy order."""
    return [p for p, n in leaf_counts(taxonomy, y).items() if n < min_examples]


def attribute_columns(frame: pd.DataFrame, taxonomy: Taxonomy) -> list[str]:
    """Extra columns that look like attributes: a handful of distinct, non-numeric values."""
    skip = NOT_ATTRIBUTES | set(taxonomy.levels)
    columns = []
    for column in frame.columns:
        values = frame[column].astype(str)
        if column in skip or values.nunique() > MAX_ATTRIBUTE_VALUES:
            continue
        if not values.str.fullmatch(r"[\d.\-]+").mean() > 0.5:
            columns.append(str(column))
    return columns


def build_contexts(
    frame: pd.DataFrame,
    taxonomy: Taxonomy,
    y: np.ndarray,
    paths: Sequence[Path_],
    extra_attributes: Mapping[str, Sequence[str]] | None = None,
) -> list[ClassContext]:
    """Attribute values and titles of each leaf in ``paths``, from the rows labeled with it.

    A leaf without rows gets the values most common over the whole file, so it still varies.
    """
    columns = attribute_columns(frame, taxonomy)
    counts = leaf_counts(taxonomy, y)
    keys = np.array([format_path(p) for p in map(tuple, y)])
    texts = frame["text"].astype(str).to_numpy()
    contexts = []
    for path in paths:
        rows = keys == format_path(path)
        source = frame.loc[rows] if rows.any() else frame
        attributes = {c: _common_values(source[c]) for c in columns}
        for name, values in (extra_attributes or {}).items():
            attributes.setdefault(name, list(values))
        attributes = {k: v for k, v in attributes.items() if v}
        contexts.append(ClassContext(path, counts[path], attributes, list(dict.fromkeys(texts[rows]))))
    return contexts


def _common_values(column: pd.Series, top: int = 12) -> list[str]:
    values = column.astype(str).str.strip()
    values = values[~values.str.casefold().isin(MISSING_VALUES)]
    return values.value_counts().index[:top].tolist()


def shopify_attributes(root: str | Path, handles: Sequence[str] = SHOPIFY_ATTRIBUTES) -> dict[str, list[str]]:
    """Short values of generic Shopify attributes (color, pattern, material) from attributes.json.

    The published files list attributes and their values but not which categories use them, so
    only attributes that fit nearly any product are taken, and only values of one or two words.
    """
    path = Path(root) / "attributes.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist; point --shopify at the shopify-taxonomy folder")
    attributes = json.loads(path.read_text(encoding="utf-8"))["attributes"]
    out: dict[str, list[str]] = {}
    for attribute in attributes:
        if attribute["handle"] in handles:
            names = [v["name"] for v in attribute["values"] if len(v["name"].split()) <= 2]
            out[attribute["handle"]] = [n for n in names if n.casefold() not in MISSING_VALUES]
    return out
