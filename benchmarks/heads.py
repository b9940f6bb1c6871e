"""Flat vs masked vs per-group heads on frozen embeddings, plus a TF-IDF + LR flat baseline.

Usage (from the repo root, with ../shared beside it):

    .venv/bin/python benchmarks/heads.py [--datasets fashion grocery] [--encoder minilm]

Fits on ``train``, reports on ``test``. Embeddings are computed once per dataset and shared by
the three heads (a shared ``CachedEncoder``). Writes ``benchmarks/results/heads.json`` and
``heads.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shelver import HierarchicalClassifier, Taxonomy
from shelver.encoders import CachedEncoder, make_encoder
from shelver.metrics import classification_metrics

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"


def load_splits(name: str) -> tuple[Taxonomy, dict[str, pd.DataFrame]]:
    frame = pd.read_csv(SHARED / name / "products.csv", dtype=str, keep_default_na=False)
    taxonomy = Taxonomy.load(SHARED / name / "taxonomy.json")
    return taxonomy, {split: frame[frame["split"] == split] for split in ("train", "valid", "test")}


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[["category", "subcategory"]].to_numpy().astype(str)


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def run_head(head: str, taxonomy: Taxonomy, encoder: CachedEncoder, splits: dict) -> dict:
    train, test = splits["train"], splits["test"]
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder=encoder, head=head)
    _, fit_s = timed(model.fit, train["text"].tolist(), labels(train))
    predicted, predict_s = timed(model.predict, test["text"].tolist())  # embeddings cached: head time
    counts = dict(zip([" > ".join(p) for p in taxonomy.paths], map(int, model.train_counts_), strict=True))
    return {
        "model": f"{encoder.spec} + {head}",
        **classification_metrics(labels(test), predicted, counts),
        "fit_s": fit_s,
        "predict_ms_per_1k": 1000 * predict_s / len(test) * 1000,
    }


def run_tfidf(taxonomy: Taxonomy, splits: dict) -> dict:
    """TF-IDF word (1-2) + char_wb (2-5) n-grams, one flat logistic regression over leaves."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    train, test = splits["train"], splits["test"]
    pipe = make_pipeline(
        make_union(
            TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, min_df=2),
        ),
        LogisticRegression(C=20.0, max_iter=1000),
    )
    leaf = [" > ".join(r) for r in labels(train)]
    _, fit_s = timed(pipe.fit, train["text"].tolist(), leaf)
    pred, predict_s = timed(pipe.predict, test["text"].tolist())
    predicted = np.array([p.split(" > ") for p in pred])
    counts = pd.Series(leaf).value_counts().to_dict()
    counts = {" > ".join(p): int(counts.get(" > ".join(p), 0)) for p in taxonomy.paths}
    return {
        "model": "tfidf word+char + LR (flat)",
        **classification_metrics(labels(test), predicted, counts),
        "fit_s": fit_s,
        "predict_ms_per_1k": 1000 * predict_s / len(test) * 1000,
    }


def markdown(results: dict[str, list[dict]], command: str) -> str:
    lines = [f"Command: `{command}`", ""]
    for dataset, rows in results.items():
        lines += [
            f"## {dataset} (test split)",
            "",
            "| model | L1 acc | L2 acc | L2 macro-F1 | tail macro-F1 | hier. F1 | fit s | head ms/1k |",
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in rows:
            tail = r["level2"]["tail_macro_f1"]
            lines.append(
                f"| {r['model']} | {r['level1']['accuracy']:.3f} | {r['level2']['accuracy']:.3f} | "
                f"{r['level2']['macro_f1']:.3f} | {'n/a' if tail is None else f'{tail:.3f}'} | "
                f"{r['hierarchical_f1']:.3f} | {r['fit_s']:.1f} | {r['predict_ms_per_1k']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion", "grocery"])
    parser.add_argument("--encoder", default="minilm")
    args = parser.parse_args()
    results: dict[str, list[dict]] = {}
    for dataset in args.datasets:
        taxonomy, splits = load_splits(dataset)
        encoder = CachedEncoder(make_encoder(args.encoder))
        texts = pd.concat([splits["train"]["text"], splits["test"]["text"]]).tolist()
        _, embed_s = timed(partial(encoder.encode, progress=True), texts)
        print(f"{dataset}: embedded {len(encoder):,} distinct texts in {embed_s:.0f} s", file=sys.stderr)
        rows = [run_head(h, taxonomy, encoder, splits) for h in ("flat", "masked", "per_group")]
        rows.append(run_tfidf(taxonomy, splits))
        results[dataset] = rows
    command = "python benchmarks/heads.py " + " ".join(sys.argv[1:])
    report = markdown(results, command.strip())
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"command": command.strip(), "machine": platform.platform(), "cpus": os.cpu_count()}
    (RESULTS / "heads.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    (RESULTS / "heads.md").write_text(report)


if __name__ == "__main__":
    main()
