"""The human loop: which labels to review first, and reviewed labels back into the store.

``audit`` scores every machine label with a trained shelver model and sorts by how little the
model believes it (``disagreement = 1 - P(label)``): the queue a reviewer should start with. The
review CSV has the query, the stored label, the model's own answer and an empty ``human_path``
column. The reviewer writes a path there (``=`` accepts the stored label, ``none`` says no
category fits, empty skips the row); ``import_reviews`` validates every row first and stores them
all in one transaction as ``human`` labels, which outrank every machine label.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from shelver.errors import DataError
from shelver.labeling.export import export_frame
from shelver.labeling.resolver import PathResolver
from shelver.labeling.store import LabelStore
from shelver.taxonomy import Path_, Taxonomy, format_path
from shelver.text_keys import text_key

REVIEW_COLUMNS = (
    "text",
    "count",
    "label",
    "source",
    "confidence",
    "model_label",
    "model_confidence",
    "disagreement",
    "human_path",
)
ACCEPT = ("=", "ok", "accept")


def audit_frame(store: LabelStore, model: Any, limit: int | None = None) -> pd.DataFrame:
    """Machine labels sorted by the model's disagreement, most doubtful first."""
    from shelver.model_dir import check_same_taxonomy

    taxonomy = store.taxonomy()
    check_same_taxonomy(model.taxonomy_, taxonomy)
    frame, _ = export_frame(store)
    frame = frame[frame["source"] != "human"].reset_index(drop=True)
    if frame.empty:
        return pd.DataFrame(columns=REVIEW_COLUMNS)
    paths = [tuple(row) for row in frame[list(taxonomy.levels)].to_numpy()]
    _, P2 = model.predict_proba(frame["text"].tolist())
    believed = P2[np.arange(len(frame)), [taxonomy.leaf_index[p] for p in paths]]
    best = P2.argmax(axis=1)
    review = pd.DataFrame(
        {
            "text": frame["text"],
            "count": frame["count"],
            "label": [format_path(p) for p in paths],
            "source": frame["source"],
            "confidence": frame["confidence"],
            "model_label": [format_path(taxonomy.paths[i]) for i in best],
            "model_confidence": P2[np.arange(len(frame)), best].round(6),
            "disagreement": (1 - believed).round(6),
            "human_path": "",
        }
    )
    review = review.sort_values(["disagreement", "count"], ascending=[False, False], kind="stable")
    return review.head(limit) if limit else review


def read_reviews(path: str | Path, taxonomy: Taxonomy) -> list[tuple[str, Path_ | None]]:
    """Validated ``(query, path or None)`` pairs from a review CSV; raises on the first bad row."""
    rows = _read_csv(Path(path))
    resolver = PathResolver(taxonomy)
    reviewed = []
    for number, row in enumerate(rows, start=2):  # row 1 is the header
        answer = (row.get("human_path") or "").strip()
        if answer:
            reviewed.append((text_key(row["text"]), _resolve(answer, row, resolver, path, number)))
    return reviewed


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"review file {str(path)!r} does not exist; write one with 'shelver labels audit'")
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        missing = {"text", "human_path"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(
                f"{path.name} has no {', '.join(sorted(missing))} column; a review file needs 'text' and "
                "'human_path' (as 'shelver labels audit' writes it)"
            )
        return list(reader)


def _resolve(
    answer: str, row: dict[str, str], resolver: PathResolver, path: Path, number: int
) -> Path_ | None:
    if answer.casefold() == "none":
        return None
    if answer.casefold() in ACCEPT:
        answer = (row.get("label") or "").strip()
        if not answer:
            raise DataError(
                f"{path.name}, row {number}: human_path {row['human_path']!r} accepts the label, "
                "but the row has no 'label'; write the path instead"
            )
    resolution = resolver.resolve(answer)
    if not resolution.ok:
        raise DataError(
            f"{path.name}, row {number} ({row['text']!r}): {resolution.reason}; write a path of the taxonomy "
            "as 'Category > Subcategory', '=' to accept the label, 'none', or leave it empty to skip"
        )
    return resolution.path


def import_reviews(store: LabelStore, path: str | Path, reviewer: str | None = None) -> int:
    """Store every reviewed row as a human label (all or nothing); returns how many. A ``.json``
    file is a Label Studio export (``shelver.labeling.label_studio``), anything else a review CSV."""
    if Path(path).suffix.lower() == ".json":
        from shelver.labeling.label_studio import read_export

        reviewed = read_export(path, store.taxonomy())
    else:
        reviewed = read_reviews(path, store.taxonomy())
    return store.record_human(reviewed, reviewer or f"review:{Path(path).name}")
