"""Frozen vs fine-tuned (each objective) vs end-to-end encoders, x flat / masked / per-group heads,
with and without lexical features, against peers (TF-IDF + LR, fastText, HiClass, SetFit).

Fit on train, early-stop / tune on valid, report on test. Embeddings and fine-tuned encoders are
cached in benchmarks/.cache/ (git-ignored); every finished row is kept in the JSON, so a rerun
skips what is done and an interrupted run loses at most one row. Stages, each resumable:

    python benchmarks/representation.py finetune fashion grocery   # encoders (time-budgeted)
    python benchmarks/representation.py evaluate fashion grocery   # heads, peers -> JSON + .md
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _cache import CACHE, DATA, cached_embeddings, read_products
from _results import RESULTS, write_results

from shelver.metrics import classification_metrics
from shelver.taxonomy import Taxonomy

NAME = "representation"
# fine-tuning budget per encoder: the cores are shared, so a wall-clock cap, not epochs
FINETUNE_BUDGET_S = float(os.environ.get("SHELVER_BENCH_FINETUNE_S", "600"))
# rows per leaf for SetFit's contrastive body (the few-shot regime it is built for)
SETFIT_PER_CLASS = 20
FINETUNE_EPOCHS = float(os.environ.get("SHELVER_BENCH_EPOCHS", "1"))
LATENCY_QUERIES = 50


# ---- data ----------------------------------------------------------------------------------
class Split:
    def __init__(self, products: dict[str, list[str]], name: str) -> None:
        rows = [i for i, s in enumerate(products["split"]) if s == name]
        self.rows = np.array(rows)
        self.texts = [products["text"][i] for i in rows]
        self.y = np.array([[products["category"][i], products["subcategory"][i]] for i in rows])


def load(dataset: str) -> tuple[Taxonomy, dict[str, list[str]], dict[str, Split]]:
    products = read_products(dataset)
    splits = {name: Split(products, name) for name in ("train", "valid", "test")}
    return Taxonomy.load(DATA / dataset / "taxonomy.json"), products, splits


def train_counts(split: Split) -> dict[str, int]:
    names, counts = np.unique([f"{c} > {s}" for c, s in split.y], return_counts=True)
    return dict(zip(names.tolist(), counts.tolist(), strict=True))


def labeled(split: Split, origin: str):
    from shelver.data import LabeledData

    return LabeledData(split.texts, split.y, ["human"] * len(split.texts), origin)


# ---- stage 1: fine-tuned encoders ------------------------------------------------------------
def encoder_config(objective: str):
    from shelver.config import EncoderConfig

    return EncoderConfig(
        name="minilm",
        finetune=True,
        objective=objective,
        epochs=FINETUNE_EPOCHS,
        time_budget_s=FINETUNE_BUDGET_S,
        eval_steps=100,
        patience=3,
        max_eval_rows=500,
    )


def finetune_stage(dataset: str, objective: str) -> None:
    from safetensors.numpy import save_file

    from shelver.finetune import describe, finetune_encoder

    out = CACHE / dataset / f"ft-{objective}"
    if (out / "shelver_finetune.json").is_file():
        return
    taxonomy, _, splits = load(dataset)
    train, valid = labeled(splits["train"], "train"), labeled(splits["valid"], "valid")
    result = finetune_encoder(encoder_config(objective), taxonomy, train, out, valid=valid)
    if result.head is not None:  # the end-to-end baseline predicts with this head
        save_file(result.head.to_arrays("e2e"), str(CACHE / dataset / "e2e-head.safetensors"))
    print(json.dumps(describe(result)), file=sys.stderr)


# ---- stage 2: heads and peers ------------------------------------------------------------------
def encoders_of(dataset: str) -> dict[str, str]:
    from shelver.encoders import resolve_model_path

    found = {"frozen": resolve_model_path("minilm")}
    for objective in ("classification", "contrastive"):
        path = CACHE / dataset / f"ft-{objective}"
        if (path / "shelver_finetune.json").is_file():
            found[f"ft-{objective}"] = str(path)
    return found


def prefilled_encoder(path: str, texts: list[str], vectors: np.ndarray):
    """A CachedEncoder that already holds every benchmark text (the model loads only on a miss)."""
    from shelver.encoders import CachedEncoder
    from shelver.encoders.sentence import SentenceEncoder

    encoder = CachedEncoder(SentenceEncoder(path, max_seq_length=32, batch_size=128))
    encoder._cache.update(zip(texts, vectors, strict=True))
    return encoder


def finetune_seconds(path: str) -> float:
    summary = Path(path) / "shelver_finetune.json"
    return json.loads(summary.read_text())["seconds"] if summary.is_file() else 0.0


def shelver_rows(dataset: str, taxonomy: Taxonomy, products, splits) -> list[tuple[str, Callable]]:
    """(name, run) for each shelver configuration; run() -> (predicted test labels, fit s, predict fn).

    Embeddings are computed (or read from the cache) only when a row that needs them runs.
    """
    rows = []
    for tag, path in encoders_of(dataset).items():
        encoder = _lazy_encoder(dataset, tag, path, products["text"])
        for head in ("flat", "masked", "per_group"):
            rows.append((f"{tag} / {head}", _shelver_run(taxonomy, splits, encoder, path, head, False)))
        for head in ("flat", "per_group"):
            name = f"{tag} + lexical / {head}"
            rows.append((name, _shelver_run(taxonomy, splits, encoder, path, head, True)))
        tuned = tuned_setting(dataset, tag)
        if tuned is not None:
            name = f"{tag} + lexical / {tuned['head']} (valid-tuned: {describe_setting(tuned)})"
            rows.append((name, _shelver_run(taxonomy, splits, encoder, path, tuned["head"], True, tuned)))
        if tag == "ft-classification" and (CACHE / dataset / "e2e-head.safetensors").is_file():
            name = "ft-classification end-to-end (its own head, flat)"
            rows.append((name, _e2e_run(dataset, taxonomy, splits, encoder, path)))
    return rows


def _lazy_encoder(dataset: str, tag: str, path: str, texts: list[str]) -> Callable:
    built: list = []

    def encoder():
        if not built:
            built.append(prefilled_encoder(path, texts, cached_embeddings(dataset, tag, path, texts)))
        return built[0]

    return encoder


def tuned_setting(dataset: str, tag: str = "frozen") -> dict | None:
    """The best lexical setting on valid (by L2 macro-F1) for the encoder ``tag``, from
    representation_valid.py; the frozen encoder's where the grid did not cover ``tag``."""
    path = RESULTS / "representation_valid.json"
    rows = json.loads(path.read_text()).get(dataset, []) if path.is_file() else []
    mine = [r for r in rows if encoder_of(r["setting"]) == tag]
    mine = mine or [r for r in rows if encoder_of(r["setting"]) == "frozen"]
    return max(mine, key=lambda r: r["valid"]["level2"]["macro_f1"])["setting"] if mine else None


def encoder_of(setting: dict) -> str:
    """The encoder tag of a valid-grid setting (the first grid, without the key, was frozen)."""
    return setting.get("encoder", "frozen")


def describe_setting(setting: dict) -> str:
    return f"C={setting['C']:g}, class_weight={setting['class_weight']}, lexical weight={setting['weight']:g}"


def _shelver_run(
    taxonomy, splits, encoder, path: str, head: str, lexical: bool, tuned: dict | None = None
) -> Callable:
    def run():
        from shelver import HierarchicalClassifier

        extra = {}
        if tuned is not None:
            extra = {"C": tuned["C"], "class_weight": tuned["class_weight"]}
            extra["lexical_options"] = {"weight": tuned["weight"]}
        model = HierarchicalClassifier(
            taxonomy=taxonomy, encoder=encoder(), head=head, lexical=lexical, **extra
        )
        start = time.perf_counter()
        model.fit(splits["train"].texts, splits["train"].y)
        fit_s = time.perf_counter() - start + finetune_seconds(path)
        return model.predict(splits["test"].texts), fit_s, _fresh_predict(model)

    return run


def _e2e_run(dataset: str, taxonomy, splits, encoder, path: str) -> Callable:
    def run():
        from safetensors.numpy import load_file

        from shelver import HierarchicalClassifier
        from shelver.heads import FlatHead, LinearSoftmax

        model = HierarchicalClassifier(taxonomy=taxonomy, encoder=encoder(), head="flat")
        model.taxonomy_, model.encoder_, model.lexical_ = taxonomy, encoder(), None
        model.head_ = FlatHead(taxonomy)
        model.head_.leaf_model = LinearSoftmax.from_arrays(
            load_file(str(CACHE / dataset / "e2e-head.safetensors")), "e2e"
        )
        model._init_decisions()  # uncalibrated, no thresholds: the head's own arg-max
        return model.predict(splits["test"].texts), finetune_seconds(path), _fresh_predict(model)

    return run


def _fresh_predict(model) -> Callable[[str], Any]:
    """Predict one query with an empty embedding cache: what a service pays per request."""
    from shelver.encoders import CachedEncoder

    def predict(query: str):
        model.encoder_ = CachedEncoder(model.encoder_.inner)
        return model.predict([query])

    return predict


# ---- peers -------------------------------------------------------------------------------------------
def peer_rows(dataset: str, taxonomy: Taxonomy, products, splits) -> list[tuple[str, Callable]]:
    from shelver.encoders.sentence import SentenceEncoder

    path = encoders_of(dataset)["frozen"]
    vectors = cached_embeddings(dataset, "frozen", path, products["text"])
    frozen = SentenceEncoder(path, max_seq_length=32)
    return [
        ("peer: TF-IDF word+char + LR (flat)", lambda: _tfidf_lr(splits)),
        ("peer: fastText (flat)", lambda: _fasttext(dataset, splits)),
        ("peer: HiClass per-parent-node LR (frozen)", lambda: _hiclass(splits, vectors, frozen)),
        ("peer: SetFit (MiniLM, same budget, body on 20 rows per leaf)", lambda: _setfit(dataset, splits)),
    ]


def _leaf(y: np.ndarray) -> np.ndarray:
    return np.array([f"{c}\x1f{s}" for c, s in y])


def _unleaf(leaves) -> np.ndarray:
    return np.array([str(x).split("\x1f") for x in leaves])


def _tfidf_lr(splits):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline, make_union

    union = make_union(
        TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
    )
    model = make_pipeline(union, LogisticRegression(C=10.0, max_iter=300))
    start = time.perf_counter()
    model.fit(splits["train"].texts, _leaf(splits["train"].y))
    fit_s = time.perf_counter() - start
    return _unleaf(model.predict(splits["test"].texts)), fit_s, lambda q: model.predict([q])


def _fasttext(dataset: str, splits):
    import tempfile

    import fasttext

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        for text, leaf in zip(splits["train"].texts, _leaf(splits["train"].y), strict=True):
            handle.write(f"__label__{leaf.replace(' ', '_')} {' '.join(text.lower().split())}\n")
    start = time.perf_counter()
    model = fasttext.train_supervised(
        handle.name, epoch=25, lr=0.5, wordNgrams=2, minn=2, maxn=5, dim=100, thread=1, seed=0, verbose=0
    )
    fit_s = time.perf_counter() - start
    os.unlink(handle.name)
    names = {leaf.replace(" ", "_"): leaf for leaf in _leaf(splits["train"].y)}

    def predict(texts):
        labels, _ = model.predict([" ".join(t.lower().split()) for t in texts])
        return _unleaf([names[label[0].removeprefix("__label__")] for label in labels])

    return predict(splits["test"].texts), fit_s, lambda q: predict([q])


def _hiclass(splits, vectors, frozen):
    from hiclass import LocalClassifierPerParentNode
    from sklearn.linear_model import LogisticRegression

    X = {name: vectors[split.rows] for name, split in splits.items()}
    model = LocalClassifierPerParentNode(local_classifier=LogisticRegression(C=10.0, max_iter=300), n_jobs=1)
    start = time.perf_counter()
    model.fit(X["train"], splits["train"].y)
    fit_s = time.perf_counter() - start
    predicted = np.asarray(model.predict(X["test"]))[:, :2].astype(str)
    return predicted, fit_s, lambda q: model.predict(frozen.encode([q]))


def _setfit(dataset: str, splits):
    """SetFit as one would run it on ~30k rows: its contrastive body on ``SETFIT_PER_CLASS`` rows per
    leaf (its pair generation enumerates every pair of training rows: on all 33k grocery rows it
    passed 21 GB and was killed), under the same training budget as shelver's fine-tuning; then
    its logistic-regression head on every training row's embedding from that body."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments
    from transformers import TrainerCallback

    from shelver.encoders import resolve_model_path

    class Budget(TrainerCallback):  # the same wall-clock budget of training steps as shelver's fine-tuning
        began = 0.0  # SetFit builds its pairs before the first step: that time is not budgeted

        def on_train_begin(self, args, state, control, **kwargs):
            self.began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if time.perf_counter() - self.began > FINETUNE_BUDGET_S:
                control.should_training_stop = True

    leaves = _leaf(splits["train"].y)
    rows = _per_class(leaves, SETFIT_PER_CLASS)
    model = SetFitModel.from_pretrained(
        resolve_model_path("minilm"), head_params={"max_iter": 300, "C": 10.0}
    )
    model.model_body.max_seq_length = 32
    args = TrainingArguments(
        output_dir=str(CACHE / dataset / "setfit-checkpoints"),
        save_strategy="no",
        batch_size=32,
        num_epochs=1,
        num_iterations=20,  # 40 pairs per sampled row: more steps than the budget allows
        seed=0,
    )
    texts = splits["train"].texts
    train = Dataset.from_dict({"text": [texts[i] for i in rows], "label": leaves[rows].tolist()})
    trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[Budget()])
    start = time.perf_counter()
    trainer.train()
    model.model_head.fit(model.model_body.encode(texts, batch_size=128), leaves)
    fit_s = time.perf_counter() - start
    predicted = model.predict(splits["test"].texts, batch_size=128)
    return _unleaf(list(predicted)), fit_s, lambda q: model.predict([q])


def _per_class(leaves: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` row indices per leaf, drawn with a fixed seed."""
    rng = np.random.default_rng(0)
    picked = [rng.permutation(np.flatnonzero(leaves == leaf))[:n] for leaf in np.unique(leaves)]
    return np.sort(np.concatenate(picked))


# ---- the table -----------------------------------------------------------------------------------
def measure(run: Callable, splits, counts: dict[str, int]) -> dict[str, Any]:
    predicted, fit_s, predict_one = run()
    metrics = classification_metrics(splits["test"].y, np.asarray(predicted), counts)
    latencies = []
    for query in splits["test"].texts[:LATENCY_QUERIES]:
        start = time.perf_counter()
        predict_one(query)
        latencies.append(time.perf_counter() - start)
    return {
        "l1_accuracy": metrics["level1"]["accuracy"],
        "l2_accuracy": metrics["level2"]["accuracy"],
        "l2_macro_f1": metrics["level2"]["macro_f1"],
        "tail_macro_f1": metrics["level2"]["tail_macro_f1"],
        "n_tail_classes": metrics["level2"]["n_tail_classes"],
        "train_s": round(fit_s, 1),
        "p50_latency_ms": round(1000 * float(np.median(latencies)), 2),
    }


def evaluate_stage(dataset: str, results: dict[str, Any], only: str | None, skip: str = "") -> None:
    taxonomy, products, splits = load(dataset)
    counts = train_counts(splits["train"])
    done = results["datasets"].setdefault(dataset, {})
    rows = shelver_rows(dataset, taxonomy, products, splits) + peer_rows(dataset, taxonomy, products, splits)
    for name, run in rows:
        if name in done or (only and only not in name) or any(k and k in name for k in skip.split(",")):
            continue
        print(f"{dataset}: {name} ...", file=sys.stderr, flush=True)
        done[name] = measure(run, splits, counts)
        with open(CACHE / "rows.jsonl", "a") as log:  # append-only: parallel runs never lose a row
            log.write(json.dumps({"dataset": dataset, "name": name, "row": done[name]}) + "\n")
        write(results)
        print(f"  {done[name]}", file=sys.stderr, flush=True)


def read_results() -> dict[str, Any]:
    """The JSON so far, plus every row logged by runs that finished after it was written."""
    path = RESULTS / f"{NAME}.json"
    results = json.loads(path.read_text()) if path.is_file() else {"datasets": {}}
    log = CACHE / "rows.jsonl"
    for line in log.read_text().splitlines() if log.is_file() else []:
        entry = json.loads(line)
        results["datasets"].setdefault(entry["dataset"], {}).setdefault(entry["name"], entry["row"])
    return results


def write(results: dict[str, Any]) -> None:
    for dataset, rows in read_results()["datasets"].items():  # keep rows other runs wrote meanwhile
        for name, row in rows.items():
            results["datasets"].setdefault(dataset, {}).setdefault(name, row)
    write_results(NAME, results, markdown(results))


COLUMNS = ("l1_accuracy", "l2_accuracy", "l2_macro_f1", "tail_macro_f1", "train_s", "p50_latency_ms")


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# {NAME}", "", f"Command: `{results['command']}`", "", results["note"], ""]
    lines += [*results.get("findings", []), ""]
    for dataset, rows in results["datasets"].items():
        lines += [f"## {dataset} (test split)", "", "| configuration | " + " | ".join(COLUMNS) + " |"]
        lines.append("|---" * (len(COLUMNS) + 1) + "|")
        for name, row in rows.items():
            cells = [
                "—" if row[c] is None else f"{row[c]:.3f}" if c.endswith(("y", "f1")) else f"{row[c]}"
                for c in COLUMNS
            ]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


COMMAND = (
    "SHELVER_BENCH_FINETUNE_S=900 SHELVER_BENCH_EPOCHS=2 python benchmarks/representation.py finetune "
    "grocery fashion; SHELVER_BENCH_SKIP='masked,SetFit,valid-tuned,ft-classification / per_group,"
    "ft-contrastive / per_group,ft-contrastive + lexical / per_group' OMP_NUM_THREADS=1 "
    "python benchmarks/representation.py evaluate grocery (and, at the same time, fashion); "
    "python benchmarks/representation.py report. Frozen rows and peers are from earlier runs "
    "(nice python benchmarks/representation_valid.py fashion; the same evaluate stage). Session 5: "
    "SHELVER_BENCH_FINETUNE_S=900 SHELVER_BENCH_ONLY=SetFit python benchmarks/representation.py evaluate "
    "grocery fashion; nice -n 19 python benchmarks/representation_valid.py fashion grocery; "
    "SHELVER_BENCH_ONLY='(valid-tuned' nice -n 19 python benchmarks/representation.py evaluate fashion; "
    "SHELVER_BENCH_FINETUNE_S=900 python benchmarks/representation.py report"
)
NOTE = (
    "Train on train, early-stop on valid, report on test. train_s = fine-tuning (wall-clock budgeted) "
    "+ head fitting on cached embeddings (embedding the training set is not counted, it is the same for "
    "every head of one encoder); p50_latency_ms = one query at a time with an empty embedding cache. "
    "The 2 CPU cores were shared with other jobs: times are noisy and pessimistic."
)


def main(argv: list[str]) -> None:
    stage, *datasets = argv
    only = os.environ.get("SHELVER_BENCH_ONLY")
    if stage == "finetune":
        for objective in ("classification", "contrastive"):
            for dataset in datasets:
                finetune_stage(dataset, objective)
        return
    results = read_results()
    results["command"] = COMMAND
    if stage == "report":  # re-render the Markdown (and findings) from what is stored
        findings = Path(__file__).resolve().parent / "results" / f"{NAME}_findings.md"
        results["findings"] = findings.read_text().splitlines() if findings.is_file() else []
        results["finetune_budget_s"] = FINETUNE_BUDGET_S
        results["finetune_runs"] = {
            f"{p.parent.parent.name}/{p.parent.name}": json.loads(p.read_text())
            for p in sorted(CACHE.glob("*/ft-*/shelver_finetune.json"))
        }
        write(results)
        return
    results["note"] = NOTE
    results["finetune_budget_s"] = FINETUNE_BUDGET_S
    for dataset in datasets:
        evaluate_stage(dataset, results, only, os.environ.get("SHELVER_BENCH_SKIP", ""))
    write(results)
    print(markdown(results))


if __name__ == "__main__":
    main(sys.argv[1:])
