"""per_group with the leaf-sum router, on cached frozen MiniLM embeddings (valid, then test).

Usage: ``python benchmarks/router.py grocery`` (embeddings cached by benchmarks/embedding_cache.py).
Prints ``dataset split head router L1 L2 macro-F1 seconds`` per line; the committed output is
``benchmarks/results/router.md``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embedding_cache import DiskCachedEncoder

from shelver import HierarchicalClassifier, Taxonomy
from shelver.encoders import CachedEncoder
from shelver.metrics import classification_metrics

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[["category", "subcategory"]].to_numpy().astype(str)


def main(name: str) -> None:
    df = pd.read_csv(SHARED / name / "products.csv", dtype=str, keep_default_na=False)
    taxonomy = Taxonomy.load(SHARED / name / "taxonomy.json")
    encoder = CachedEncoder(DiskCachedEncoder("minilm", name=name))
    train = df[df.split == "train"]
    for split in ("valid", "test"):
        scored = df[df.split == split]
        start = time.time()
        model = HierarchicalClassifier(taxonomy=taxonomy, encoder=encoder, head="per_group", router="leaves")
        model.fit(train.text.tolist(), labels(train))
        counts = {" > ".join(p): int(n) for p, n in zip(taxonomy.paths, model.train_counts_, strict=True)}
        r = classification_metrics(labels(scored), model.predict(scored.text.tolist()), counts)
        print(
            name,
            split,
            "per_group",
            "leaves",
            round(r["level1"]["accuracy"], 3),
            round(r["level2"]["accuracy"], 3),
            round(r["level2"]["macro_f1"], 3),
            round(time.time() - start),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1])
