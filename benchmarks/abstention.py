"""Calibration, abstention and multi-label on the shared data (issue 4).

For fashion and grocery: train the default per_group head on frozen MiniLM embeddings (train
split), calibrate and choose thresholds on valid, report on test: coverage at precision per
level, ECE before/after calibration, and the precision the valid-chosen thresholds actually
reach on test. ``fashion_best`` and ``grocery_best`` do the same for the demo configuration
(benchmarks/configs/frozen_lexical_flat.toml: frozen MiniLM + lexical TF-IDF, flat head, C=10). Then the
multi-label fashion view (gender x category, 270 leaves): per-class thresholds against top-1
answers of the same model.

    PYTHONPATH=src nice python benchmarks/abstention.py [fashion] [grocery] [multi_label]
        [fashion_best] [grocery_best]

Sections can run one at a time (the others' results are kept); each records its git commit.
Embeddings are cached under benchmarks/.cache (git-ignored); reports go to runs/abstention/.
``SHELVER_BENCH_ROWS=300`` keeps the first 300 rows of each split: a smoke run of the code path,
whose results go to benchmarks/.cache/abstention-smoke.* and runs/abstention-smoke/ instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embedding_cache import DiskCachedEncoder

from shelver import HierarchicalClassifier, Taxonomy
from shelver.config import load_config
from shelver.data import LabeledData, explode_multi_label, labels_of
from shelver.metrics import expected_calibration_error
from shelver.report import evaluate, write_report
from shelver.training import build_model
from shelver.views import fashion_gender_view

DATA = Path("/work/shared/data")
ROOT = Path(__file__).resolve().parents[1]
# a smoke run keeps the first ROWS rows of each split, and never writes over the real results
ROWS = int(os.environ.get("SHELVER_BENCH_ROWS", "0")) or None
RESULTS = ROOT / "benchmarks" / (".cache" if ROWS else "results")
STEM = "abstention-smoke" if ROWS else "abstention"
REPORTS = ROOT / "runs" / STEM
COMMAND = "PYTHONPATH=src nice python benchmarks/abstention.py"
BEST_CONFIG = ROOT / "benchmarks" / "configs" / "frozen_lexical_flat.toml"
TARGETS = (0.9, 0.95, 0.99)
ENCODER_OPTIONS = {"max_seq_length": 32, "batch_size": 128}


def splits(frame: pd.DataFrame, taxonomy: Taxonomy, name: str) -> dict[str, LabeledData]:
    out = {}
    for split in ("train", "valid", "test"):
        part = explode_multi_label(frame[frame["split"] == split].reset_index(drop=True), taxonomy)
        part = part.iloc[:ROWS]
        texts = part["text"].str.strip().tolist()
        out[split] = LabeledData(
            texts, labels_of(part, taxonomy, name), ["human"] * len(texts), f"{name}/{split}"
        )
    return out


def fit(
    taxonomy: Taxonomy, encoder: DiskCachedEncoder, train: LabeledData, **params
) -> HierarchicalClassifier:
    model = HierarchicalClassifier(taxonomy=taxonomy, encoder=encoder, progress=True, **params)
    timed_fit(model, train)
    return model


def timed_fit(model: HierarchicalClassifier, train: LabeledData) -> float:
    """Fit ``model`` in place; the seconds it took."""
    start = time.perf_counter()
    model.fit(train.texts, train.y)
    seconds = time.perf_counter() - start
    print(f"  fitted in {seconds:.0f}s", flush=True)
    return seconds


def operating_points(model: HierarchicalClassifier, data: dict[str, LabeledData]) -> list[dict]:
    """For each target: thresholds chosen on valid, and what they give on test."""
    rows = []
    for target in TARGETS:
        model.set_params(target_precision=target).calibrate(data["valid"].texts, data["valid"].y)
        test = evaluate(model, data["test"]).metrics
        rows.append(
            {
                "target_precision": target,
                "threshold": {lv: test["thresholds"][lv] for lv in ("level1", "level2")},
                "test_coverage": {lv: test["selective"][lv]["coverage"] for lv in ("level1", "level2")},
                "test_precision": {
                    lv: test["selective"][lv]["selective_accuracy"] for lv in ("level1", "level2")
                },
                "decisions": test["decisions"],
            }
        )
    return rows


def load_splits(name: str) -> tuple[Taxonomy, dict[str, LabeledData]]:
    frame = pd.read_csv(DATA / name / "products.csv", dtype=str, keep_default_na=False)
    taxonomy = Taxonomy.load(DATA / name / "taxonomy.json")
    return taxonomy, splits(frame, taxonomy, name)


def single_label(name: str) -> dict:
    print(f"{name}: single-label", flush=True)
    taxonomy, data = load_splits(name)
    model = fit(taxonomy, DiskCachedEncoder("minilm", name, **ENCODER_OPTIONS), data["train"])
    return summary(name, model, data, REPORTS / name, f"{name} test: per_group head on frozen MiniLM")


def best(name: str) -> dict:
    """The demo configuration, exactly as ``shelver train --config`` builds it, with the
    benchmark's on-disk embedding cache as its encoder (same MiniLM, same options)."""
    print(f"{name}: the demo configuration ({BEST_CONFIG.relative_to(ROOT)})", flush=True)
    config = load_config(BEST_CONFIG)
    taxonomy, data = load_splits(name)
    options = {"max_seq_length": config.encoder.max_seq_length, "batch_size": config.encoder.batch_size}
    encoder = DiskCachedEncoder(config.encoder.name, name, **options)
    model = build_model(config, taxonomy).set_params(encoder=encoder, encoder_options=None)
    title = f"{name} test: frozen MiniLM + lexical TF-IDF, {config.head.kind} head, C={config.head.C:g}"
    seconds = timed_fit(model, data["train"])
    out = summary(name, model, data, REPORTS / f"{name}-best", title)
    out["fit_seconds"] = seconds
    out["configuration"] = {"file": str(BEST_CONFIG.relative_to(ROOT)), **config.to_dict()}
    return out


def summary(
    name: str, model: HierarchicalClassifier, data: dict[str, LabeledData], report: Path, title: str
) -> dict:
    """A fitted model: thresholds for each target on valid, then the 0.95 model's test report."""
    uncalibrated = evaluate(model, data["test"]).metrics
    points = operating_points(model, data)
    model.set_params(target_precision=0.95).calibrate(data["valid"].texts, data["valid"].y)
    evaluation = evaluate(model, data["test"])
    write_report(evaluation, report, title=title)
    m, taxonomy = evaluation.metrics, model.taxonomy_
    return {
        "dataset": name,
        "rows": {s: len(d) for s, d in data.items()},
        "classes": {"level1": len(taxonomy.categories), "level2": len(taxonomy)},
        "accuracy": {"level1": m["level1"]["accuracy"], "level2": m["level2"]["accuracy"]},
        "coverage_at_precision_test": m["coverage_at_precision"],
        "coverage_at_precision_test_uncalibrated": uncalibrated["coverage_at_precision"],
        "ece_before_calibration": m["ece_before_calibration"],
        "ece_after_calibration": m["ece"],
        "ece_level1_leaf_temperature_only": leaf_temperature_only_ece(model, data["test"]),
        "temperatures": {
            "level1": model.calibration_.level1,
            "level2_pooled": model.calibration_.level2,
            "n_groups_with_own_temperature": len(model.calibration_.groups),
            "leaf_first": model.calibration_.leaf_first,
        },
        "valid_chosen_thresholds_on_test": points,
        "timing": decision_overhead(model, data["test"]),
    }


def leaf_temperature_only_ece(model: HierarchicalClassifier, test: LabeledData) -> float | None:
    """Level-1 test ECE of a leaf-first (flat) head whose category sums had no temperature of
    their own, as before issue 4's fix; ``None`` for top-down heads."""
    if not model.calibration_.leaf_first:
        return None
    leaf_category = np.asarray(model.taxonomy_.leaf_category)
    s = model.scores(test.texts)
    P1, _ = dataclasses.replace(model.calibration_, level1=1.0).apply(*s.raw, leaf_category)
    truth = leaf_category[[model.taxonomy_.leaf_index[tuple(row)] for row in test.y]]
    confidence = P1[np.arange(len(truth)), s.categories]
    return expected_calibration_error(confidence, s.categories == truth)


def decision_overhead(model: HierarchicalClassifier, test: LabeledData) -> dict:
    """Median ms to score the test split from embeddings: raw head vs calibrated + decisions."""
    embeddings = model.features(test.texts)

    def head_only() -> None:
        model.decode(*model.head_proba(embeddings))

    def with_decisions() -> None:
        from shelver.decisions import decide

        s = model._scores(model.head_proba(embeddings))
        decide(s.conf1, s.conf2, model.thresholds_)

    return {
        "n": len(test),
        "head_ms": _median_ms(head_only),
        "head_calibration_decisions_ms": _median_ms(with_decisions),
    }


def _median_ms(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return float(np.median(times))


def multi_label() -> dict:
    print("fashion gender view: multi-label", flush=True)
    products = pd.read_csv(DATA / "fashion" / "products.csv", dtype=str, keep_default_na=False)
    rows, taxonomy = fashion_gender_view(products)
    data = splits(rows, taxonomy, "fashion-gender")
    encoder = DiskCachedEncoder("minilm", "fashion", **ENCODER_OPTIONS)
    model = fit(taxonomy, encoder, data["train"], multi_label=True)
    out = {
        "rows_texts": {s: int((rows["split"] == s).sum()) for s in ("train", "valid", "test")},
        "multi_label_texts": {
            s: int(((rows["split"] == s) & (rows["n_labels"] > 1)).sum()) for s in ("train", "valid", "test")
        },
        "classes": {"level1": len(taxonomy.categories), "level2": len(taxonomy)},
    }
    for label, target in (("per_class_f1_optimal", None), ("per_class_precision_0.95", 0.95)):
        model.set_params(target_precision=target).calibrate(data["valid"].texts, data["valid"].y)
        evaluation = evaluate(model, data["test"])
        out[label] = evaluation.metrics["multi_label"]
        if target is None:
            write_report(evaluation, REPORTS / "fashion-gender", title="fashion gender view, multi-label")
            out["ece_before_calibration_top1"] = evaluation.metrics["ece_before_calibration"]
            out["ece_after_calibration_top1"] = evaluation.metrics["ece"]
            out["coverage_at_precision_top1"] = evaluation.metrics["coverage_at_precision"]
    # the same weights answering only their top-1 path (a single-label decision rule)
    top1 = [{tuple(p.candidate)} for p in model.classify(list(dict.fromkeys(data["test"].texts)))]
    truth = {}
    for text, row in zip(data["test"].texts, data["test"].y, strict=True):
        truth.setdefault(text, set()).add(tuple(row))
    from shelver.metrics import multi_label_metrics

    out["top1_only"] = multi_label_metrics(list(truth.values()), top1)
    return out


def _row(cells: list) -> str:
    return "| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |"


def markdown(results: dict) -> str:
    lines = [f"`{COMMAND}`", "", "## Single-label: test split, thresholds chosen on valid", ""]
    header = ["dataset", "L2 acc", "L2 cov@0.90", "L2 cov@0.95", "L2 cov@0.99", "L1 cov@0.95"]
    header += ["L2 ECE before", "L2 ECE after", "L1 ECE before", "L1 ECE after"]
    lines += [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for r in results["single_label"]:
        cov, cov1 = r["coverage_at_precision_test"]["level2"], r["coverage_at_precision_test"]["level1"]
        before, after = r["ece_before_calibration"], r["ece_after_calibration"]
        lines.append(
            _row(
                [
                    r["dataset"],
                    r["accuracy"]["level2"],
                    cov["0.9"],
                    cov["0.95"],
                    cov["0.99"],
                    cov1["0.95"],
                    f"{before['level2']:.4f}",
                    f"{after['level2']:.4f}",
                    f"{before['level1']:.4f}",
                    f"{after['level1']:.4f}",
                ]
            )
        )
    lines += ["", "Thresholds chosen on valid for a target precision, applied to test:", ""]
    lines += thresholds_table(results["single_label"])
    ml = results["multi_label"]
    lines += ["", "## Multi-label fashion view (gender x category: 108 -> 270 classes), test texts", ""]
    header = ["decision rule", "example F1", "subset accuracy", "coverage", "mean paths answered"]
    lines += [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for key in ("top1_only", "per_class_f1_optimal", "per_class_precision_0.95"):
        r = ml[key]
        lines.append(
            _row(
                [key, r["example_f1"], r["subset_accuracy"], r["coverage"], f"{r['mean_paths_answered']:.2f}"]
            )
        )
    n_multi, n_texts = ml["multi_label_texts"]["test"], ml["rows_texts"]["test"]
    lines += ["", f"Multi-label texts in test: {n_multi:,} of {n_texts:,}."]
    if results.get("best"):
        lines += best_tables(results["best"])
    return "\n".join(lines) + "\n"


def thresholds_table(sections: list[dict]) -> list[str]:
    header = ["dataset", "target", "L2 threshold", "L2 test coverage", "L2 test precision"]
    header += ["L1 threshold", "L1 test coverage", "L1 test precision"]
    lines = [_row(header), _row(["---"] + ["---:"] * (len(header) - 1))]
    for r in sections:
        for p in r["valid_chosen_thresholds_on_test"]:
            t, c, q = p["threshold"], p["test_coverage"], p["test_precision"]
            cells = [r["dataset"], str(p["target_precision"])]
            lines.append(
                _row([*cells, t["level2"], c["level2"], q["level2"], t["level1"], c["level1"], q["level1"]])
            )
    return lines


def best_tables(sections: list[dict]) -> list[str]:
    """The demo configuration: accuracy, coverage at precision and ECE per level, thresholds."""
    lines = ["", f"## Demo configuration ({BEST_CONFIG.relative_to(ROOT)}): test split", ""]
    lines += ["Frozen MiniLM + lexical TF-IDF, flat head, C=10; fit on train, temperatures and"]
    lines += ["thresholds on valid. ECE leaf-T only: level 1 without the sums' own temperature.", ""]
    header = ["dataset", "level", "acc", "cov@0.90", "cov@0.95", "cov@0.99", "ECE before", "ECE after"]
    header += ["ECE leaf-T only", "temperature"]
    lines += [_row(header), _row(["---", "---"] + ["---:"] * (len(header) - 2))]
    lines += [_row(_level_cells(r, level)) for r in sections for level in ("level1", "level2")]
    lines += ["", "Thresholds chosen on valid for a target precision, applied to test:", ""]
    return lines + thresholds_table(sections)


def _level_cells(r: dict, level: str) -> list:
    cov, only = r["coverage_at_precision_test"][level], r["ece_level1_leaf_temperature_only"]
    temperature = r["temperatures"]["level1" if level == "level1" else "level2_pooled"]
    return [
        r["dataset"],
        level.replace("level", "L"),
        r["accuracy"][level],
        *(cov[t] for t in ("0.9", "0.95", "0.99")),
        f"{r['ece_before_calibration'][level]:.4f}",
        f"{r['ece_after_calibration'][level]:.4f}",
        f"{only:.4f}" if level == "level1" and only is not None else "",
        f"{temperature:.3f}",
    ]


SECTIONS = ("fashion", "grocery", "multi_label", "fashion_best", "grocery_best")


def run_section(name: str) -> dict:
    if name == "multi_label":
        return multi_label()
    if name.endswith("_best"):
        return best(name.removesuffix("_best"))
    return single_label(name)


def main() -> None:
    """Run the sections named on the command line (default: all); results of the others are
    kept from the previous run, so sections can run one at a time on a busy machine."""
    only = [a for a in sys.argv[1:] if a in SECTIONS] or list(SECTIONS)
    path = RESULTS / f"{STEM}.json"
    fresh = {}
    for name in only:
        fresh[name] = run_section(name)
        fresh[name]["git_commit"] = _commit()
        fresh[name]["rows_per_split_limit"] = ROWS
    # read the previous results only now: another section may have finished meanwhile
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.update({"command": f"{COMMAND} [{' '.join(SECTIONS)}]", "encoder": "minilm (frozen)"})
    results["head"] = "per_group"
    sections = results.setdefault("sections", {})
    sections.update(fresh)
    results["single_label"] = [sections[n] for n in ("fashion", "grocery") if n in sections]
    results["multi_label"] = sections.get("multi_label", {})
    results["best"] = [sections[n] for n in ("fashion_best", "grocery_best") if n in sections]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    if len(results["single_label"]) == 2 and results["multi_label"]:
        text = markdown(results)
        (RESULTS / f"{STEM}.md").write_text(text)
        print(text)
    elif results["best"]:  # a partial (or smoke) run: the demo configuration's tables alone
        print("\n".join(best_tables(results["best"])))


def _commit() -> str:
    import subprocess

    return subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()


if __name__ == "__main__":
    main()
