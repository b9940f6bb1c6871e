"""From the store to a training file: the best label per query, checked path by path.

Human labels outrank machine labels (they live in the same row and a machine never overwrites
them). Only ``labeled`` rows at or above ``min_confidence`` go out; ``none``, rejected and failed
rows never do. Every path is checked against the taxonomy before anything is written, so an
exported file holds no invalid path by construction, and ``shelver.data.read_labeled`` reads it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from shelver.data import WRITE_SUFFIXES, write_table
from shelver.errors import LabelStoreError
from shelver.labeling.store import LabelStore
from shelver.taxonomy import Taxonomy, parse_path

EXPORT_COLUMNS = ("text", "source", "confidence", "agreement", "count")


def export_frame(
    store: LabelStore,
    min_confidence: float = 0.0,
    min_agreement: float = 0.0,
    taxonomy: Taxonomy | None = None,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """The training rows and what was left out, by reason.

    With ``taxonomy`` (a newer tree, say), labels whose path it lacks are dropped and counted;
    without it, every path must be in the store's own taxonomy or the export refuses.
    """
    own = store.taxonomy()
    target = taxonomy or own
    rows, skipped = [], {"none": 0, "rejected_or_error": 0, "below_threshold": 0, "not_in_taxonomy": 0}
    for label in store.labels():
        keep = _keep(label, min_confidence, min_agreement, skipped)
        if keep and _valid(label, target, taxonomy is not None, store, skipped):
            rows.append(_row(label, target))
    columns = ["text", *target.levels, *EXPORT_COLUMNS[1:]]
    return pd.DataFrame(rows, columns=columns), skipped


def _keep(label: dict, min_confidence: float, min_agreement: float, skipped: dict[str, int]) -> bool:
    if label["status"] == "none":
        skipped["none"] += 1
        return False
    if label["status"] != "labeled":
        skipped["rejected_or_error"] += 1
        return False
    human = label["source"] == "human"
    if not human and (
        (label["confidence"] or 0) < min_confidence or (label["agreement"] or 0) < min_agreement
    ):
        skipped["below_threshold"] += 1
        return False
    return True


def _valid(
    label: dict, taxonomy: Taxonomy, lenient: bool, store: LabelStore, skipped: dict[str, int]
) -> bool:
    path = parse_path(label["path"] or "")
    if path in taxonomy:
        return True
    if lenient:
        skipped["not_in_taxonomy"] += 1
        return False
    raise LabelStoreError(
        f"{store.path}: the label of {label['query']!r} is {label['path']!r}, which is not a path of the "
        f"store's taxonomy ({taxonomy.explain_unknown(path)}); the store was edited by hand: "
        "relabel that query"
    )


def _row(label: dict, taxonomy: Taxonomy) -> dict:
    path = parse_path(label["path"])
    levels = dict(zip(taxonomy.levels, path, strict=True))
    return {
        "text": label["query"],
        **levels,
        "source": label["source"],
        "confidence": round(label["confidence"], 6),
        "agreement": round(label["agreement"], 6),
        "count": label["count"],
    }


def write_training_file(frame: pd.DataFrame, out: str | Path) -> Path:
    """CSV, Parquet or JSONL by suffix (CSV when none is given); ``data.write_table`` writes it."""
    out = Path(out)
    if out.suffix.lower() not in WRITE_SUFFIXES:
        out = out.with_suffix(out.suffix + ".csv") if out.suffix else out.with_suffix(".csv")
    return write_table(frame, out)
