"""Files in and out of synthesis: the training file with its attribute columns, the valid/test texts
to keep clear of, and the synthetic rows as a labeled file."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from shelver.errors import DataError
from shelver.synthesis.contexts import SynthRow
from shelver.taxonomy import Taxonomy


def read_training(path: str | Path, taxonomy: Taxonomy) -> tuple[pd.DataFrame, np.ndarray]:
    """The training file as a frame (extra columns kept: they are the attributes) and its labels."""
    from shelver.data import explode_multi_label, labels_of, read_table, texts_of

    origin = Path(path).name
    frame = explode_multi_label(read_table(path), taxonomy)
    if frame.empty:
        raise DataError(f"{origin} has no rows; a labeled file needs at least one")
    frame = frame.assign(text=texts_of(frame, origin))
    return frame.reset_index(drop=True), labels_of(frame, taxonomy, origin)


def read_avoid(paths: Sequence[str | Path]) -> list[str]:
    """Every text of the files synthetic rows must not leak into (valid, test)."""
    from shelver.data import read_table, texts_of

    return [t for p in paths for t in texts_of(read_table(p), Path(p).name)]


def to_frame(rows: Iterable[SynthRow], taxonomy: Taxonomy) -> pd.DataFrame:
    """A frame ``read_labeled`` accepts: text, one column per level, source."""
    records = [
        {"text": r.text, **dict(zip(taxonomy.levels, r.path, strict=True)), "source": r.source} for r in rows
    ]
    return pd.DataFrame(records, columns=["text", *taxonomy.levels, "source"])


def write_rows(rows: Iterable[SynthRow], taxonomy: Taxonomy, out: str | Path) -> Path:
    """The rows as CSV, Parquet or JSONL by ``out``'s suffix (``data.write_table``)."""
    from shelver.data import write_table

    return write_table(to_frame(rows, taxonomy), out)
