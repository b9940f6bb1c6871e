"""How consistent are a data set's own labels? Test rows against their nearest training rows.

A model's most confident answers are for texts that (nearly) repeat a training text. If the data
labels such repeats differently, no model reaches a high precision on them: the agreement below is
a ceiling on what confidence-ranked coverage at precision 0.95 can find (issue 4).

For each test row: the training rows with the same normalised text, with the same set of words,
and the nearest training row by frozen MiniLM cosine. Agreement = the test label equals the
training rows' majority label (L2) or category (L1).

    python benchmarks/label_consistency.py --datasets fashion grocery

``shelver labels conflicts`` lists such pairs for your own files.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections import Counter

import numpy as np
from _cache import cached_embeddings, read_products
from _results import write_results

from shelver.encoders import resolve_model_path
from shelver.text_keys import text_key, word_set_key

BANDS = (0.99, 0.97, 0.95, 0.90, 0.85, -1.0)  # nearest-neighbour cosine, lower edges


Label = tuple[str, str]


def key_agreement(keys: list[str], labels: list[Label], train: np.ndarray, test: np.ndarray) -> dict:
    """Test rows whose key some training row shares, and how often the labels agree."""
    seen: dict[str, Counter] = {}
    for i in train:
        seen.setdefault(keys[i], Counter())[labels[i]] += 1
    hits = [(seen[keys[i]].most_common(1)[0][0], labels[i]) for i in test if keys[i] in seen]
    return _agreement(hits, len(test))


def _agreement(pairs: list[tuple[Label, Label]], total: int) -> dict:
    return {
        "rows": len(pairs),
        "share_of_test": len(pairs) / total,
        "l1_agreement": float(np.mean([a[0] == b[0] for a, b in pairs])) if pairs else None,
        "l2_agreement": float(np.mean([a == b for a, b in pairs])) if pairs else None,
    }


def nearest_train(vectors: np.ndarray, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index into ``train`` and cosine of each test row's nearest training row."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    best, sims = np.empty(len(test), np.int64), np.empty(len(test), np.float32)
    for s in range(0, len(test), 1024):
        scores = unit[test[s : s + 1024]] @ unit[train].T
        best[s : s + 1024] = scores.argmax(1)
        sims[s : s + 1024] = scores.max(1)
    return train[best], sims


def bands(labels: list[Label], near: np.ndarray, sims: np.ndarray, test: np.ndarray) -> dict:
    out, upper = {}, np.inf
    for low in BANDS:
        rows = np.flatnonzero((sims >= low) & (sims < upper))
        name = f"{low:.2f}-{min(upper, 1.0):.2f}" if low > 0 else f"< {BANDS[-2]:.2f}"
        out[name] = _agreement([(labels[near[r]], labels[test[r]]) for r in rows], len(test))
        upper = low
    return out


def measure(dataset: str) -> dict:
    cols = read_products(dataset)
    texts, labels = cols["text"], list(zip(cols["category"], cols["subcategory"], strict=True))
    split = np.array(cols["split"])
    train, test = np.flatnonzero(split == "train"), np.flatnonzero(split == "test")
    vectors = cached_embeddings(dataset, "frozen", resolve_model_path("minilm"), texts)
    near, sims = nearest_train(vectors, train, test)
    return {
        "test_rows": len(test),
        "same_text": key_agreement([text_key(t) for t in texts], labels, train, test),
        "same_words": key_agreement([word_set_key(t) for t in texts], labels, train, test),
        "nearest_train_cosine": bands(labels, near, sims, test),
    }


NOTE = """Agreement: the test row's label equals the majority label of the matched training rows (L2:
category and subcategory; L1: category). The nearest-train rows are the test rows a model is most
sure of, since they repeat what it was trained on: where their labels disagree, precision is capped.
"""


def markdown(results: dict) -> str:
    lines = ["# Label consistency: test rows against their nearest training rows", ""]
    lines += [f"`{results['command']}` (encoder: {results['encoder']})", ""]
    lines += ["| dataset | test rows matched by | rows | share of test | L1 agreement | L2 agreement |"]
    lines += ["| --- | --- | ---: | ---: | ---: | ---: |"]
    for dataset, r in results["datasets"].items():
        rows = {"same normalised text": r["same_text"], "same set of words": r["same_words"]}
        rows |= {f"nearest-train cosine {k}": v for k, v in r["nearest_train_cosine"].items()}
        lines += [f"| {dataset} | {name} | {_row(v)} |" for name, v in rows.items()]
    return "\n".join(lines + ["", NOTE])


def _row(v: dict) -> str:
    fmt = lambda x: "" if x is None else f"{x:.3f}"  # noqa: E731
    return f"{v['rows']:,} | {v['share_of_test']:.3f} | {fmt(v['l1_agreement'])} | {fmt(v['l2_agreement'])}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion", "grocery"])
    parser.add_argument("--out", default="label_consistency")
    args = parser.parse_args()
    results = {
        "command": "python benchmarks/label_consistency.py " + shlex.join(sys.argv[1:]),
        "encoder": "all-MiniLM-L6-v2, frozen, max_seq_length 32",
        "datasets": {name: measure(name) for name in args.datasets},
    }
    write_results(args.out, results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
