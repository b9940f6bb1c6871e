"""Does synthetic data help the tail? Train vs train + each generator vs train + all, on real test rows.

Usage (from the repo root, with ../shared beside it):

    nice .venv/bin/python benchmarks/synthesis.py [--datasets fashion] [--encoder hashing|minilm]
        [--per-class 30] [--seed 0]

Synthetic rows are made for the leaves with < 50 real training rows (``shelver.synthesis``, with the
valid and test texts as ``avoid``, so nothing leaks), appended to the real training rows, and every
model is evaluated on the real ``test`` split only. The tail is fixed by the *real* training counts.
A second test set is a query-ized copy of ``test`` (titles shortened the way the ``titles`` generator
does it, with its own seed): the same procedure as one generator, so read that column with care.
``minilm`` reads cached embeddings from ``benchmarks/.cache`` (``embedding_cache.py``). Writes
``benchmarks/results/synthesis.json`` and ``synthesis.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shelver import HierarchicalClassifier, Taxonomy
from shelver import synthesis as s
from shelver.encoders import CachedEncoder, make_encoder
from shelver.metrics import TAIL_THRESHOLD, band_metrics, leaf_names, macro_f1

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
CONDITIONS = {
    "train": (),
    "+attributes": ("attributes",),
    "+titles": ("titles",),
    "+all": ("attributes", "titles"),
    # the consistency filter: keep rows the train-only model ranks on their leaf in its top 3
    "+all judged": ("attributes", "titles"),
}
JUDGE_TOP_K = 3


def load(name: str) -> tuple[Taxonomy, dict[str, pd.DataFrame]]:
    frame = pd.read_csv(SHARED / name / "products.csv", dtype=str, keep_default_na=False)
    taxonomy = Taxonomy.load(SHARED / name / "taxonomy.json")
    splits = {k: frame[frame["split"] == k].reset_index(drop=True) for k in ("train", "valid", "test")}
    return taxonomy, splits


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[["category", "subcategory"]].to_numpy().astype(str)


def encoder_for(spec: str, dataset: str) -> CachedEncoder:
    if spec == "minilm":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from embedding_cache import DiskCachedEncoder

        return CachedEncoder(DiskCachedEncoder("minilm", name=dataset))
    return CachedEncoder(make_encoder(spec))


def queryized(test: pd.DataFrame, taxonomy: Taxonomy, train: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The test titles as short queries (brand, sizes, codes dropped; noise added), labels kept."""
    generator = s.TitleGenerator(seed=seed + 1000)
    contexts = s.build_contexts(train, taxonomy, labels(train), taxonomy.paths)
    known = {w for c in contexts for v in c.attributes.values() for x in v for w in s.normalize(x).split()}
    known |= s.GENDER_WORDS | {w for p in taxonomy.paths for w in s.normalize(" ".join(p)).split()}
    rng = random.Random(seed)
    texts = [generator.queryize(t, known, rng) or t for t in test["text"]]
    return test.assign(text=texts)


def score(model: HierarchicalClassifier, test: pd.DataFrame, counts: dict[str, int]) -> dict:
    truth, predicted = labels(test), model.predict(test["text"].tolist())
    true_leaf, pred_leaf = leaf_names(truth), leaf_names(predicted)
    tail = sorted({leaf for leaf in true_leaf if counts.get(leaf, 0) < TAIL_THRESHOLD})
    non_tail = np.array([counts.get(leaf, 0) >= TAIL_THRESHOLD for leaf in true_leaf])
    return {
        "l2_accuracy": float(np.mean(true_leaf == pred_leaf)),
        "l2_macro_f1": macro_f1(true_leaf, pred_leaf),
        "tail_macro_f1": macro_f1(true_leaf, pred_leaf, labels=tail),
        "n_tail_classes": len(tail),
        "non_tail_accuracy": float(np.mean(true_leaf[non_tail] == pred_leaf[non_tail])),
        "by_band": band_metrics(truth, predicted, counts),
    }


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    taxonomy, splits = load(name)
    train, test = splits["train"], splits["test"]
    counts = {" > ".join(p): n for p, n in s.leaf_counts(taxonomy, labels(train)).items()}
    avoid = splits["valid"]["text"].tolist() + test["text"].tolist()
    tests = {"test": test, "test_queryized": queryized(test, taxonomy, train, args.seed)}
    encoder = encoder_for(args.encoder, name)
    rows: dict[str, dict] = {}
    judge = None
    for condition, generators in CONDITIONS.items():
        started = time.perf_counter()
        data, synth = train[["text", "category", "subcategory"]], None
        if generators:
            synth = s.synthesize(
                taxonomy,
                train,
                labels(train),
                s.make_generators(generators, args.seed),
                encoder=encoder,
                per_class=args.per_class,
                avoid=avoid,
                judge=judge if condition.endswith("judged") else None,
                filters=s.FilterConfig(judge_top_k=JUDGE_TOP_K),
            )
            data = pd.concat([data, s.to_frame(synth.rows, taxonomy)], ignore_index=True)
        model = HierarchicalClassifier(taxonomy=taxonomy, encoder=encoder).fit(
            data["text"].tolist(), labels(data)
        )
        judge = judge or s.ClassifierJudge(model)  # the first model: trained on real rows only
        rows[condition] = {
            "synthetic_rows": len(synth.rows) if synth else 0,
            "removed": synth.counts.removed if synth else {},
            **{k: score(model, t, counts) for k, t in tests.items()},
            "seconds": time.perf_counter() - started,
        }
        print(
            f"{name} {condition}: {json.dumps(rows[condition]['test'], default=float)[:200]}", file=sys.stderr
        )
    return {
        "n_train": len(train),
        "n_test": len(test),
        "n_tail_leaves_in_train": sum(n < 50 for n in counts.values()),
        "conditions": rows,
    }


def markdown(results: dict, command: str) -> str:
    lines = [f"# Synthetic queries for the tail\n\n`{command}`\n"]
    for name, result in results["datasets"].items():
        lines += [
            f"## {name} (train {result['n_train']:,}, test {result['n_test']:,}; real test rows only)\n",
            "| condition | synthetic rows | test L2 acc | test tail macro-F1 | test non-tail acc "
            "| queryized L2 acc | queryized tail macro-F1 |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for condition, r in result["conditions"].items():
            t, q = r["test"], r["test_queryized"]
            lines.append(
                f"| {condition} | {r['synthetic_rows']:,} | {t['l2_accuracy']:.4f} | "
                f"{t['tail_macro_f1']:.4f} | {t['non_tail_accuracy']:.4f} | {q['l2_accuracy']:.4f} | "
                f"{q['tail_macro_f1']:.4f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion"])
    parser.add_argument("--encoder", default="hashing")
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="synthesis")
    args = parser.parse_args()
    command = "python benchmarks/synthesis.py " + " ".join(sys.argv[1:])
    results = {
        "command": command,
        "encoder": args.encoder,
        "per_class": args.per_class,
        "seed": args.seed,
        "machine": platform.platform(),
        "datasets": {name: run_dataset(name, args) for name in args.datasets},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    table = markdown(results, command)
    (RESULTS / f"{args.out}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
