"""Tune the lexical model's C, class weights and lexical weight, and pick the encoder, on *valid*.

Fits on train with cached embeddings (frozen MiniLM, and the fine-tuned encoders that
``representation.py finetune`` left in the cache), scores valid, and writes the grid to
benchmarks/results/representation_valid.{json,md}; representation.py reads the best setting per
data set and encoder (by valid L2 macro-F1) for its "valid-tuned" rows. Test is never scored here.

    nice python benchmarks/representation_valid.py fashion grocery
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cache import cached_embeddings
from representation import RESULTS, encoder_of, encoders_of, load, prefilled_encoder, train_counts

from shelver import HierarchicalClassifier
from shelver.metrics import classification_metrics

GRID = [
    {"head": "flat", "C": 10.0, "class_weight": "balanced", "weight": 1.0},
    {"head": "flat", "C": 30.0, "class_weight": None, "weight": 1.0},
    {"head": "flat", "C": 30.0, "class_weight": "balanced", "weight": 1.0},
    {"head": "flat", "C": 10.0, "class_weight": "balanced", "weight": 2.0},
    {"head": "flat", "C": 10.0, "class_weight": None, "weight": 1.0},  # the defaults, for reference
]
# the fine-tuned encoders (900 s each): the defaults and the class weights that helped frozen most
FINETUNED = [
    {"encoder": f"ft-{objective}", "head": "flat", "C": 10.0, "class_weight": weights, "weight": 1.0}
    for objective in ("contrastive", "classification")
    for weights in (None, "balanced")
]
PATH = RESULTS / "representation_valid.json"


def score(dataset: str, setting: dict) -> dict:
    taxonomy, products, splits = load(dataset)
    tag = encoder_of(setting)
    path = encoders_of(dataset)[tag]
    encoder = prefilled_encoder(
        path, products["text"], cached_embeddings(dataset, tag, path, products["text"])
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
        found = encoders_of(dataset)
        for setting in [*(s for s in FINETUNED if s["encoder"] in found), *GRID]:
            if any(r["setting"] == setting for r in rows):
                continue
            rows.append(score(dataset, setting))
            print(dataset, json.dumps(rows[-1]["setting"]), rows[-1]["valid"]["level2"], flush=True)
            PATH.write_text(json.dumps(results, indent=2) + "\n")
            PATH.with_suffix(".md").write_text(markdown(results))


def markdown(results: dict) -> str:
    lines = ["# Representation: valid split (choices are made here, never on test)", ""]
    lines += [f"`{results['command']}`", ""]
    head = "| encoder | C | class_weight | lexical weight | L1 acc | L2 acc | L2 macro-F1 | tail macro-F1 |"
    for dataset, rows in results.items():
        if dataset == "command":
            continue
        lines += [f"## {dataset} (valid)", "", head, "|---" * 8 + "|"]
        for row in rows:
            s, v = row["setting"], row["valid"]
            level2 = (v["level2"][k] for k in ("accuracy", "macro_f1", "tail_macro_f1"))
            metrics = (v["level1"]["accuracy"], *level2)
            cells = [encoder_of(s), f"{s['C']:g}", str(s["class_weight"]), f"{s['weight']:g}"]
            lines.append("| " + " | ".join(cells + [f"{m:.3f}" for m in metrics]) + " |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main(sys.argv[1:])
