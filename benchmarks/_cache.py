"""Embedding cache shared by the benchmarks: one ``.npy`` per (data set, encoder), git-ignored.

Rows follow ``products.csv`` order, so every split slices the same array.
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np

DATA = Path("/work/shared/data")
CACHE = Path(__file__).resolve().parent / ".cache"


def read_products(dataset: str) -> dict[str, list[str]]:
    """Columns of ``products.csv`` (read with the csv module: 'NA' stays a string)."""
    with open(DATA / dataset / "products.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [r[key] for r in rows] for key in ("text", "category", "subcategory", "split")}


def cached_embeddings(dataset: str, tag: str, encoder_path: str, texts: list[str]) -> np.ndarray:
    """Embeddings of ``texts`` by the encoder at ``encoder_path``, computed once per ``tag``."""
    path = CACHE / dataset / f"{tag}.npy"
    if path.is_file():
        return np.load(path)
    from shelver.encoders.sentence import SentenceEncoder

    start = time.perf_counter()
    unique = list(dict.fromkeys(texts))  # fashion repeats a third of its titles: embed each once
    encoder = SentenceEncoder(encoder_path, max_seq_length=32, batch_size=128)
    by_text = dict(zip(unique, encoder.encode(unique, progress=True), strict=True))
    vectors = np.stack([by_text[t] for t in texts])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    print(
        f"embedded {len(texts):,} {dataset} texts with {tag} in {time.perf_counter() - start:.0f}s",
        file=sys.stderr,
    )
    return vectors


if __name__ == "__main__":  # warm the cache: python benchmarks/_cache.py fashion grocery
    from shelver.encoders import resolve_model_path

    for name in sys.argv[1:]:
        cached_embeddings(name, "frozen", resolve_model_path("minilm"), read_products(name)["text"])
