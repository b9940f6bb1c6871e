"""Evaluation views built from the shared data sets.

``fashion_gender_view`` turns the single-label fashion catalogue into a multi-label task:
category = gender + category, subcategory = gender + subcategory (108 -> 270 classes), with
the gender words removed from the titles, so that "Puma Men Black Running Shoes" and "Puma
Women Black Running Shoes" become one text with two paths. The view is re-split by the SHA-1 of
the new text (the source split hashed the titles *with* their gender words, so the same
remaining text could otherwise straddle train and test).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd

from shelver.data import write_table
from shelver.taxonomy import Taxonomy, format_path

# every spelling of the five gender values seen in the titles (possessives, singulars)
GENDER_WORDS = re.compile(
    r"\b(?:men|mens|man|women|womens|woman|boys?|girls?|unisex)(?:'s|'|’s)?(?=\W|$)", re.IGNORECASE
)
MULTI_SEPARATOR = " | "
# train / valid / test shares close to the source's 78 / 11 / 11
SPLIT_BUCKETS = (("train", 78), ("valid", 89), ("test", 100))


def strip_gender(text: str) -> str:
    """``"Puma Men's Black Shoes"`` -> ``"Puma Black Shoes"``."""
    return " ".join(GENDER_WORDS.sub(" ", text).split())


def split_of(text: str) -> str:
    bucket = int(hashlib.sha1(text.lower().encode()).hexdigest()[:8], 16) % 100
    return next(name for name, upper in SPLIT_BUCKETS if bucket < upper)


def fashion_gender_view(products: pd.DataFrame) -> tuple[pd.DataFrame, Taxonomy]:
    """``(rows, taxonomy)``: one row per distinct gender-free text, ``path`` holding every path."""
    frame = pd.DataFrame(
        {
            "text": products["text"].map(strip_gender),
            "category": products["gender"] + " " + products["category"],
            "subcategory": products["gender"] + " " + products["subcategory"],
        }
    )
    frame = frame[frame["text"] != ""]
    frame["path"] = [format_path(p) for p in zip(frame["category"], frame["subcategory"], strict=True)]
    frame["key"] = frame["text"].str.lower()
    merged = frame.groupby("key", sort=False).agg(
        text=("text", "first"), path=("path", lambda p: MULTI_SEPARATOR.join(sorted(set(p))))
    )
    merged["n_labels"] = merged["path"].str.count(re.escape(MULTI_SEPARATOR)) + 1
    merged["split"] = merged["text"].map(split_of)
    pairs = sorted(set(zip(frame["category"], frame["subcategory"], strict=True)))
    taxonomy = Taxonomy.from_paths(pairs, name="fashion-gender")
    return merged.reset_index(drop=True), taxonomy


def write_fashion_gender_view(products_csv: str | Path, out: str | Path) -> dict[str, Path]:
    """Write ``taxonomy.json`` and ``train/valid/test.csv`` of the view under ``out``."""
    products = pd.read_csv(products_csv, dtype=str, keep_default_na=False)
    rows, taxonomy = fashion_gender_view(products)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {"taxonomy": out / "taxonomy.json"}
    taxonomy.save(files["taxonomy"])
    for split in ("train", "valid", "test"):
        files[split] = out / f"{split}.csv"
        write_table(rows.loc[rows["split"] == split, ["text", "path", "n_labels"]], files[split])
    return files
