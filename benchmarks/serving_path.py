"""The request path of a lexical model, before and after issue 7, measured in one process.

"Before" is rebuilt here as it was: scikit-learn's ``TfidfVectorizer.transform`` on the saved
vocabulary, the embedding and lexical blocks joined into one SciPy CSR matrix, ``X @ coef.T``
(which made SciPy copy the whole weight matrix on every call) and ``np.add.at`` for the category
sums. "After" is the library: ``LexicalFeatures.rows``, blocks multiplied apart, weights stored
transposed. Then the full ``classify`` against the ONNX encoder alone at batch 1 and 64, and the
time from process start to a loaded model that has answered once (without the web server).

Usage (from the repo root, ``PYTHONPATH=src``), on any lexical model whose encoder is torch-free
(``onnx:DIR`` or ``hashing``), or any lexical model with ``--onnx DIR`` to swap an encoder in:

    python benchmarks/serving_path.py --model MODEL_DIR --data examples/fashion/test.csv

Prints a table and writes ``benchmarks/results/serving_path.json``. Medians are quoted; every
ratio compares figures measured in this run, the two sides of it timed alternately.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from shelver.features import BLOCKS, _vectorizer, join_features
from shelver.heads import softmax
from shelver.model_dir import load_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"p50_ms": round(float(np.median(ms)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4)}


def alternate(fns: dict[str, Callable[[str], object]], texts: list[str]) -> dict[str, dict]:
    """Each text through every function in turn; wall and calling-thread CPU time per call."""
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for text in texts:
        for name, fn in fns.items():
            w, c = time.perf_counter(), time.thread_time()
            fn(text)
            cpu[name].append(time.thread_time() - c)
            wall[name].append(time.perf_counter() - w)
    return {name: {"wall": stats(wall[name]), "cpu": stats(cpu[name])} for name in fns}


class Before:
    """The lexical block and flat head as they were computed before issue 7."""

    def __init__(self, model) -> None:
        lexical = model.lexical_
        self.weight = lexical.options.weight
        self.vectorizers = []
        for block in BLOCKS:
            vocabulary = {term: i for i, term in enumerate(lexical.vocabularies[block])}
            vectorizer = _vectorizer(lexical.options, block, vocabulary=vocabulary)
            vectorizer.idf_ = lexical.idf[block]
            self.vectorizers.append(vectorizer)
        leaf = model.head_.leaf_model
        self.coef = np.ascontiguousarray(leaf.coef)  # stored (n_classes, n_features), as it was
        self.intercept, self.leaf_category = leaf.intercept, model.head_.leaf_category
        self.n_categories = len(model.taxonomy_.categories)

    def proba(self, embeddings: np.ndarray, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        blocks = [vectorizer.transform(texts) for vectorizer in self.vectorizers]
        lexical = (sp.hstack(blocks, format="csr") * self.weight).astype(np.float32)
        X = sp.hstack([sp.csr_matrix(embeddings), lexical], format="csr")
        P2 = softmax(X @ self.coef.T + self.intercept)
        P1 = np.zeros((P2.shape[0], self.n_categories), dtype=np.float32)
        np.add.at(P1.T, self.leaf_category, P2.T)
        return P1, P2


def lexical_and_head(model, texts: list[str]) -> dict:
    """Batch 1, the embedding given: only the part that changed."""
    before = Before(model)
    embedding = {t: model.encoder_.encode([t]) for t in texts}

    def after(text: str) -> tuple[np.ndarray, np.ndarray]:
        return model.head_.proba(join_features(embedding[text], model.lexical_.rows([text])))

    worst = max(float(np.abs(after(t)[1] - before.proba(embedding[t], [t])[1]).max()) for t in texts[:500])
    out = alternate({"before": lambda t: before.proba(embedding[t], [t]), "after": after}, texts)
    out["features_only_after"] = alternate({"rows": lambda t: model.lexical_.rows([t])}, texts)["rows"]
    out["max_abs_difference_P2"] = worst
    return out


def classify_vs_encoder(model, texts: list[str]) -> dict:
    for text in texts[:200]:  # warm-up
        model.classify([text])
    calls = {"encoder_only": lambda t: model.encoder_.encode([t]), "classify": lambda t: model.classify([t])}
    out = alternate(calls, texts)
    for clock in ("wall", "cpu"):
        ratio = out["classify"][clock]["p50_ms"] / out["encoder_only"][clock]["p50_ms"]
        out[f"ratio_p50_{clock}"] = round(ratio, 3)
    return out


def batch_rates(model, texts: list[str], batch: int, rounds: int) -> dict:
    """Queries per second (wall) and per CPU-second of the calling thread, alternating."""
    batches = [texts[i : i + batch] for i in range(0, len(texts) - batch + 1, batch)]
    model.classify(batches[0])
    out: dict[str, dict[str, list[float]]] = {"wall": {}, "cpu": {}}
    for _ in range(rounds):
        for name, fn in (("encoder_only", model.encoder_.encode), ("classify", model.classify)):
            w, c = time.perf_counter(), time.thread_time()
            for chunk in batches:
                fn(chunk)
            n = len(batches) * batch
            out["wall"].setdefault(name, []).append(n / (time.perf_counter() - w))
            out["cpu"].setdefault(name, []).append(n / (time.thread_time() - c))
    return {clock: {k: round(float(np.median(v)), 1) for k, v in r.items()} for clock, r in out.items()}


def startup(model_dir: Path, runs: int) -> dict:
    """Process start to a loaded model that has classified once; and what it imported."""
    code = (
        "import sys; from shelver.model_dir import load_model;"
        f"load_model({str(model_dir)!r}, encoder='serving', threads=1).classify(['red sneakers']);"
        "print(sorted(k for k in ('sklearn', 'pandas', 'scipy', 'torch') if k in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    times, imported = [], ""
    for _ in range(runs):
        t0 = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t0)
        imported = result.stdout.strip() or result.stderr[-300:]
    return {"runs": runs, "s_median": round(float(np.median(times)), 3), "heavy_modules": imported}


def read_texts(path: Path, n: int) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)]
    return (texts * (n // len(texts) + 1))[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=ROOT / "examples" / "fashion" / "test.csv")
    parser.add_argument("--onnx", type=Path, help="an ONNX encoder directory to swap in")
    parser.add_argument("--queries", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    model = load_model(args.model, encoder="serving", threads=1)
    if args.onnx:
        from shelver.encoders.onnx import OnnxEncoder

        model.encoder_ = OnnxEncoder(args.onnx, threads=1)
    texts = read_texts(args.data, args.queries)
    result = {
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()}",
        "note": args.note,
        "n_features": int(model.head_.leaf_model.weights.shape[0]),
        "lexical_and_head_batch1": lexical_and_head(model, texts),
        "classify_vs_encoder_batch1": classify_vs_encoder(model, texts),
        "batch64_q_per_s": batch_rates(model, read_texts(args.data, 64 * 40), 64, args.rounds),
        "start_to_first_answer": startup(args.model, 5),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serving_path.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
