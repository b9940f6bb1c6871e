"""Tune the lexical model's C, class weights and lexical weight on *valid* (never test).

Fits on train with cached frozen MiniLM embeddings, scores valid, and writes the grid to
benchmarks/results/representation_valid.json; representation.py reads the best setting per
data set (by valid L2 macro-F1) for its "valid-tuned" rows.

    nice python benchmarks/representation_valid.py fashion grocery
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cache import cached_embeddings
from representation import RESULTS, encoders_of, load, prefilled_encoder, train_counts

from shelver import HierarchicalClassifier
from shelver.metrics import classification_metrics

GRID = [
    {"head": "flat", "C": 10.0, "class_weight": "balanced", "weight": 1.0},
    {"head": "flat", "C": 30.0, "class_weight": None, "weight": 1.0},
    {"head": "flat", "C": 30.0, "class_weight": "balanced", "weight": 1.0},
    {"head": "flat", "C": 10.0, "class_weight": "balanced", "weight": 2.0},
    {"head": "flat", "C": 10.0, "class_weight": None, "weight": 1.0},  # the defaults, for reference
]
PATH = RESULTS / "representation_valid.json"


def score(dataset: str, setting: dict) -> dict:
    taxonomy, products, splits = load(dataset)
    path = encoders_of(dataset)["frozen"]
    encoder = prefilled_encoder(
        path, products["text"], cached_embeddings(dataset, "frozen", path, products["text"])
    )
    model = HierarchicalClassifier(
        taxonomy=taxonomy,
        encoder=encoder,
        head=setting["head"],
        C=setting["C"],
        class_weight=setting["class_weight"],
        lexical=True,
        lexical_options={"weight": setting["weight"]},
    )
    start = time.perf_counter()
    model.fit(splits["train"].texts, splits["train"].y)
    fit_s = time.perf_counter() - start
    metrics = classification_metrics(
        splits["valid"].y, model.predict(splits["valid"].texts), train_counts(splits["train"])
    )
    return {"setting": setting, "valid": metrics, "fit_s": round(fit_s, 1)}


def main(datasets: list[str]) -> None:
    results = json.loads(PATH.read_text()) if PATH.is_file() else {}
    results["command"] = "nice python benchmarks/representation_valid.py " + " ".join(datasets)
    for dataset in datasets:
        rows = results.setdefault(dataset, [])
        for setting in GRID:
            if any(r["setting"] == setting for r in rows):
                continue
            rows.append(score(dataset, setting))
            print(dataset, json.dumps(rows[-1]["setting"]), rows[-1]["valid"]["level2"], flush=True)
            PATH.write_text(json.dumps(results, indent=2) + "\n")


def best_setting(dataset: str) -> dict | None:
    if not PATH.is_file() or dataset not in (results := json.loads(PATH.read_text())):
        return None
    return max(results[dataset], key=lambda r: r["valid"]["level2"]["macro_f1"])["setting"]


if __name__ == "__main__":
    main(sys.argv[1:])
