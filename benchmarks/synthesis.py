"""Does synthetic data help the tail? Train vs train + each generator vs train + all, on real test rows.

Usage (from the repo root, with ../shared beside it):

    nice .venv/bin/python benchmarks/synthesis.py [--datasets fashion] [--encoder hashing|minilm]
        [--per-class 30] [--seeds 0 1 2] [--llm qwen2.5-coder-1.5b [--llm-datasets grocery]]

Synthetic rows are made for the leaves with < 50 real training rows (``shelver.synthesis``, with the
valid and test texts as ``avoid``, so nothing leaks), appended to the real training rows, and every
model is evaluated on the real ``test`` split only. The tail is fixed by the *real* training counts.
Each seed re-draws the synthetic rows; the train-only model does not depend on it and is fit once
(it is also the judge of ``+all judged``). The Markdown table gives the median over seeds and the
[min, max] of the tail column; the JSON keeps every seed.
A second test set is a query-ized copy of ``test`` (titles shortened the way the ``titles`` generator
does it, with its own fixed seed): the same procedure as one generator, so read that column with care.
``--llm MODEL`` adds ``+llm`` and ``+all with llm`` (``shelver.synthesis.LLMGenerator`` on the
``llamacpp`` backend, one thread); ``--conditions`` runs only the named ones. The LLM's replies
are cached in ``benchmarks/.cache`` so a rerun does not regenerate.
``minilm`` reads cached embeddings from ``benchmarks/.cache`` (``embedding_cache.py``). Writes
``benchmarks/results/<out>.json`` and ``<out>.md`` after each dataset.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from shelver import HierarchicalClassifier, Taxonomy
from shelver import synthesis as s
from shelver.encoders import CachedEncoder, make_encoder
from shelver.metrics import TAIL_THRESHOLD, band_metrics, leaf_names, macro_f1
from shelver.taxonomy import format_path
from shelver.text_keys import word_sequence_key

ROOT = Path(__file__).resolve().parents[1]
# ../shared beside the checkout; a worktree elsewhere points SHELVER_SHARED_DATA at it
SHARED = Path(os.environ.get("SHELVER_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / ".cache"
CONDITIONS = {
    "+attributes": ("attributes",),
    "+titles": ("titles",),
    "+all": ("attributes", "titles"),
    # the consistency filter: keep rows the train-only model ranks on their leaf in its top 3
    "+all judged": ("attributes", "titles"),
}
LLM_CONDITIONS = {"+llm": ("llm",), "+all with llm": ("attributes", "titles", "llm")}
JUDGE_TOP_K = 3
# abstention.py's options, so both share one embedding cache; titles and queries fit in 32 tokens
MINILM_OPTIONS = {"max_seq_length": 32, "batch_size": 128}
# the evaluation set must not move with the synthetic seed: one fixed query-ized copy of test
QUERYIZE_SEED = 0
SUMMARY_KEYS = ("l2_accuracy", "l2_macro_f1", "tail_macro_f1", "non_tail_accuracy")


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

        return CachedEncoder(DiskCachedEncoder("minilm", name=dataset, **MINILM_OPTIONS))
    return CachedEncoder(make_encoder(spec))


def queryized(test: pd.DataFrame, taxonomy: Taxonomy, train: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The test titles as short queries (brand, sizes, codes dropped; noise added), labels kept."""
    generator = s.TitleGenerator(seed=seed + 1000)
    contexts = s.build_contexts(train, taxonomy, labels(train), taxonomy.paths)
    known = {
        w for c in contexts for v in c.attributes.values() for x in v for w in word_sequence_key(x).split()
    }
    known |= s.GENDER_WORDS | {w for p in taxonomy.paths for w in word_sequence_key(" ".join(p)).split()}
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


class CachedLLMGenerator:
    """An ``LLMGenerator`` whose replies are kept on disk, keyed by model, seed and prompt."""

    def __init__(self, inner: s.LLMGenerator, file: Path, most: int) -> None:
        self.inner, self.file, self.source, self.most = inner, file, inner.source, most
        self.table: dict[str, list[str]] = json.loads(file.read_text()) if file.is_file() else {}

    def generate(self, context: s.ClassContext, k: int) -> list[str]:
        k = min(k, self.most)
        prompt = json.dumps([self.inner.source, self.inner.seed, k, self.inner.prompt(context, k)])
        key = hashlib.sha1(prompt.encode()).hexdigest()
        if key not in self.table:
            started = time.perf_counter()
            self.table[key] = self.inner.generate(context, k)
            print(
                f"  llm {format_path(context.path)}: {time.perf_counter() - started:.0f} s", file=sys.stderr
            )
            self.file.parent.mkdir(parents=True, exist_ok=True)
            self.file.write_text(json.dumps(self.table, indent=0))
        return self.table[key]


def generators_for(names: tuple[str, ...], seed: int, dataset: str, args: argparse.Namespace) -> list:
    out = s.make_generators(names, seed, args.backend if "llm" in names else None)
    cache, most = CACHE / f"llm-{dataset}.json", args.llm_per_class
    return [CachedLLMGenerator(g, cache, most) if isinstance(g, s.LLMGenerator) else g for g in out]


class Setup:
    """One dataset, its encoder, its fixed test sets and the train-only model (the judge)."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name, self.args = name, args
        self.taxonomy, splits = load(name)
        self.train, test = splits["train"], splits["test"]
        leaf_counts = s.leaf_counts(self.taxonomy, labels(self.train))
        self.counts = {" > ".join(p): n for p, n in leaf_counts.items()}
        self.avoid = splits["valid"]["text"].tolist() + test["text"].tolist()
        self.tests = {
            "test": test,
            "test_queryized": queryized(test, self.taxonomy, self.train, QUERYIZE_SEED),
        }
        self.encoder = encoder_for(args.encoder, name)
        self.judge: s.ClassifierJudge | None = None

    def fit(self, data: pd.DataFrame) -> HierarchicalClassifier:
        model = HierarchicalClassifier(taxonomy=self.taxonomy, encoder=self.encoder)
        return model.fit(data["text"].tolist(), labels(data))

    def evaluate(self, model: HierarchicalClassifier) -> dict:
        return {k: score(model, t, self.counts) for k, t in self.tests.items()}


def run_train(setup: Setup) -> dict:
    started = time.perf_counter()
    model = setup.fit(setup.train[["text", "category", "subcategory"]])
    setup.judge = s.ClassifierJudge(model)  # trained on real rows only
    run = {"seed": None, "synthetic_rows": 0, "removed": {}, **setup.evaluate(model)}
    return {**run, "seconds": time.perf_counter() - started}


def run_condition(setup: Setup, condition: str, names: tuple[str, ...], seed: int) -> dict:
    started = time.perf_counter()
    synth = s.synthesize(
        setup.taxonomy,
        setup.train,
        labels(setup.train),
        generators_for(names, seed, setup.name, setup.args),
        encoder=setup.encoder,
        per_class=setup.args.per_class,
        avoid=setup.avoid,
        judge=setup.judge if condition.endswith("judged") else None,
        filters=s.FilterConfig(judge_top_k=JUDGE_TOP_K),
    )
    real = setup.train[["text", "category", "subcategory"]]
    model = setup.fit(pd.concat([real, s.to_frame(synth.rows, setup.taxonomy)], ignore_index=True))
    run = {"seed": seed, "synthetic_rows": len(synth.rows), "removed": synth.counts.removed}
    return {**run, **setup.evaluate(model), "seconds": time.perf_counter() - started}


def summarize(runs: list[dict]) -> dict:
    """Median, min and max over seeds of every headline number (``test.tail_macro_f1`` ...)."""
    keys = ["synthetic_rows"] + [f"{t}.{k}" for t in ("test", "test_queryized") for k in SUMMARY_KEYS]
    out = {}
    for key in keys:
        values = [_get(run, key) for run in runs]
        out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def _get(run: dict, key: str) -> float:
    for part in key.split("."):
        run = run[part]
    return float(run)  # type: ignore[arg-type]


def conditions_for(name: str, args: argparse.Namespace) -> dict[str, tuple[str, ...]]:
    with_llm = args.llm and name in (args.llm_datasets or args.datasets)
    every = {**CONDITIONS, **(LLM_CONDITIONS if with_llm else {})}
    return {c: names for c, names in every.items() if not args.conditions or c in args.conditions}


def run_dataset(name: str, args: argparse.Namespace) -> dict:
    setup = Setup(name, args)
    runs = {"train": [run_train(setup)]}
    report(name, "train", runs["train"][-1])
    for condition, names in conditions_for(name, args).items():
        runs[condition] = []
        for seed in args.seeds:
            runs[condition].append(run_condition(setup, condition, names, seed))
            report(name, f"{condition} seed {seed}", runs[condition][-1])
    return {
        "n_train": len(setup.train),
        "n_test": len(setup.tests["test"]),
        "n_tail_leaves_in_train": sum(n < TAIL_THRESHOLD for n in setup.counts.values()),
        "conditions": {c: {"summary": summarize(r), "runs": r} for c, r in runs.items()},
    }


def report(name: str, label: str, run: dict) -> None:
    t = run["test"]
    line = f"tail {t['tail_macro_f1']:.4f} non-tail {t['non_tail_accuracy']:.4f} L2 {t['l2_accuracy']:.4f}"
    print(f"{name} {label}: {run['synthetic_rows']} rows, {line}, {run['seconds']:.0f} s", file=sys.stderr)


def markdown(results: dict) -> str:
    seeds = " ".join(map(str, results["seeds"]))
    lines = [
        f"# Synthetic queries for the tail\n\n`{results['command']}`\n",
        f"Encoder `{results['encoder']}`, per-class {results['per_class']}, seeds {seeds}: each cell is "
        "the median over seeds; the tail column adds [min, max]. Δ are points against `train` "
        "(seed-independent, fit once). Real test rows only.\n",
    ]
    for name, result in results["datasets"].items():
        lines += dataset_table(name, result)
    return "\n".join(lines)


def dataset_table(name: str, result: dict) -> list[str]:
    lines = [
        f"## {name} (train {result['n_train']:,}, test {result['n_test']:,}, "
        f"{result['n_tail_leaves_in_train']} tail leaves in train)\n",
        "| condition | synthetic rows | test L2 acc | test tail macro-F1 [min, max] | Δ tail | "
        "test non-tail acc | Δ non-tail | queryized L2 acc | queryized tail macro-F1 [min, max] |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = result["conditions"]["train"]["summary"]
    for condition, entry in result["conditions"].items():
        lines.append(table_row(condition, entry["summary"], base))
    return [*lines, ""]


def table_row(condition: str, m: dict, base: dict) -> str:
    def med(key: str) -> float:
        return m[key]["median"]

    def spread(key: str) -> str:
        return f"{med(key):.4f} [{m[key]['min']:.4f}, {m[key]['max']:.4f}]"

    def delta(key: str) -> str:
        return f"{100 * (med(key) - base[key]['median']):+.1f}"

    return (
        f"| {condition} | {med('synthetic_rows'):,.0f} | {med('test.l2_accuracy'):.4f} | "
        f"{spread('test.tail_macro_f1')} | {delta('test.tail_macro_f1')} | "
        f"{med('test.non_tail_accuracy'):.4f} | {delta('test.non_tail_accuracy')} | "
        f"{med('test_queryized.l2_accuracy'):.4f} | {spread('test_queryized.tail_macro_f1')} |"
    )


def make_llm_backend(args: argparse.Namespace) -> Any:
    if not args.llm:
        return None
    from shelver.labeling.backends import make_backend

    return make_backend("llamacpp", args.llm, {"n_threads": args.llm_threads})


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion"])
    parser.add_argument("--encoder", default="hashing")
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="synthetic draws; medians reported")
    parser.add_argument("--llm", default=None, help="add +llm with this GGUF model (e.g. qwen2.5-coder-1.5b)")
    parser.add_argument("--llm-datasets", nargs="+", default=None, help="only these datasets get +llm")
    parser.add_argument("--llm-threads", type=int, default=1)
    # ~10 tokens/s on a free core (2.5 on a busy one): 10 lines a call keep a call under a minute,
    # and past ~10 lines a small model starts repeating itself
    parser.add_argument("--llm-per-class", type=int, default=10, help="queries asked of the LLM per leaf")
    parser.add_argument("--out", default="synthesis")
    choices = [*CONDITIONS, *LLM_CONDITIONS]
    parser.add_argument("--conditions", nargs="+", choices=choices, help="only these (train always runs)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    command = "python benchmarks/synthesis.py " + shlex.join(sys.argv[1:])
    results: dict = {"command": command, "encoder": args.encoder, "per_class": args.per_class}
    results |= {
        "seeds": args.seeds,
        "llm": args.llm,
        "llm_per_class": args.llm_per_class,
        "machine": platform.platform(),
        "datasets": {},
    }
    args.backend = make_llm_backend(args)
    for name in args.datasets:
        results["datasets"][name] = run_dataset(name, args)
        write(results, args.out)  # after each dataset: a late failure keeps what was measured
    print(markdown(results))


def write(results: dict, out: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out}.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
    (RESULTS / f"{out}.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
