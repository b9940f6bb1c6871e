"""Evaluate a model on labeled data and write ``metrics.json`` and ``report.md``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shelver import metrics as m
from shelver.calibration import describe_fitted_on
from shelver.data import label_sets
from shelver.taxonomy import format_path

if TYPE_CHECKING:
    from shelver.classifier import HierarchicalClassifier
    from shelver.data import LabeledData


@dataclass
class Evaluation:
    """Everything a report shows; ``metrics`` is what ``metrics.json`` holds."""

    metrics: dict[str, Any]
    per_class: list[dict] = field(default_factory=list)
    confused: list[dict] = field(default_factory=list)
    per_group: list[dict] = field(default_factory=list)
    # risk-coverage curves and reliability tables per level (plotted, not in metrics.json)
    curves: dict[str, dict] = field(default_factory=dict)
    reliability: dict[str, dict[str, list[dict]]] = field(default_factory=dict)
    withheld: list[dict] = field(default_factory=list)


def evaluate(model: HierarchicalClassifier, data: LabeledData) -> Evaluation:
    """Accuracy and F1 of the arg-max path; then what the thresholds answer, how well the
    confidences are calibrated, and (multi-label models) the quality of the answered sets."""
    predictions = model.classify(data.texts)
    candidates = np.array([p.candidate for p in predictions], dtype=str).reshape(-1, 2)
    counts = train_counts(model)
    result = m.classification_metrics(data.y, candidates, counts)
    result["by_band"] = m.band_metrics(data.y, candidates, counts)
    result["model"] = {"head": model.head, "encoder": model.encoder_.spec, "multi_label": model.multi_label_}
    if getattr(model, "selection_", None) is not None:  # how train_model chose the head
        result["model"]["selection"] = model.selection_
    sources = np.array(data.source)
    if len(set(sources)) > 1:  # real, LLM-labeled and synthetic traffic are measured apart
        result["by_source"] = {
            s: m.classification_metrics(data.y[sources == s], candidates[sources == s], counts)
            for s in sorted(set(sources))
        }
    evaluation = Evaluation(
        result,
        m.per_class(data.y, candidates, counts),
        m.confused_pairs(data.y, candidates),
        m.per_group_accuracy(data.y, candidates),
    )
    add_confidence_metrics(evaluation, model, data, predictions)
    return evaluation


def add_confidence_metrics(
    evaluation: Evaluation, model: HierarchicalClassifier, data: LabeledData, predictions: list
) -> None:
    """Risk-coverage, coverage at precision, selective accuracy and ECE before/after, per level."""
    scores = model.scores(data.texts)
    correct = _correct(model, data, scores)
    rows = np.arange(len(scores.leaves))
    raw = {"level1": scores.raw[0][rows, scores.categories], "level2": scores.raw[1][rows, scores.leaves]}
    conf = {"level1": scores.conf1, "level2": scores.conf2}
    decisions = np.array([p.decision for p in predictions])
    answered = {"level1": decisions != "abstain", "level2": decisions == "full"}
    metrics = evaluation.metrics
    metrics["coverage_at_precision"] = {lv: m.coverage_at_precision(conf[lv], correct[lv]) for lv in conf}
    metrics["ece"] = {lv: m.expected_calibration_error(conf[lv], correct[lv]) for lv in conf}
    metrics["ece_before_calibration"] = {
        lv: m.expected_calibration_error(raw[lv], correct[lv]) for lv in conf
    }
    metrics["selective"] = {lv: m.selective_metrics(conf[lv], correct[lv], answered[lv]) for lv in conf}
    metrics["thresholds"] = {"level1": model.thresholds_.level1, "level2": model.thresholds_.level2}
    metrics["decisions"] = {d: int(np.sum(decisions == d)) for d in ("full", "category", "abstain")}
    fitted_on = model.calibrated_on_
    metrics["calibration"] = {"fitted_on": fitted_on, "summary": describe_fitted_on(fitted_on)}
    backoff = m.hierarchical_risk_coverage(
        conf["level1"], conf["level2"], correct["level1"], correct["level2"]
    )
    metrics["hierarchical_aurc"] = backoff["aurc"]
    evaluation.curves["hierarchical"] = _thin({k: backoff[k] for k in ("threshold", "coverage", "risk")})
    evaluation.curves.update({lv: _thin(m.risk_coverage(conf[lv], correct[lv])) for lv in conf})
    evaluation.reliability = {
        lv: {"before": m.reliability(raw[lv], correct[lv]), "after": m.reliability(conf[lv], correct[lv])}
        for lv in conf
    }
    evaluation.withheld = _withheld_examples(data, predictions)
    if model.multi_label_:
        metrics["multi_label"] = _multi_label(model, data, predictions)


def _correct(model: HierarchicalClassifier, data: LabeledData, scores: Any) -> dict[str, np.ndarray]:
    """Is the arg-max right at each level? Multi-label: is it among the text's labels?"""
    index = model.taxonomy_.leaf_index
    leaves = np.array([index[tuple(row)] for row in data.y])
    leaf_category = np.asarray(model.taxonomy_.leaf_category)
    if not model.multi_label_:
        return {"level1": scores.categories == leaf_category[leaves], "level2": scores.leaves == leaves}
    texts, sets = label_sets(data.texts, leaves)
    by_text = dict(zip(texts, sets, strict=True))
    return {
        "level1": np.array(
            [
                c in {leaf_category[j] for j in by_text[t]}
                for t, c in zip(data.texts, scores.categories, strict=True)
            ]
        ),
        "level2": np.array([leaf in by_text[t] for t, leaf in zip(data.texts, scores.leaves, strict=True)]),
    }


def _multi_label(model: HierarchicalClassifier, data: LabeledData, predictions: list) -> dict[str, Any]:
    """Set metrics over distinct texts: leaf paths answered vs the text's true paths."""
    truth: dict[str, set] = {}
    for text, row in zip(data.texts, data.y, strict=True):
        truth.setdefault(text, set()).add(tuple(row))
    answered = {p.text: {q for q in p.paths if all(q)} for p in predictions}
    texts = list(truth)
    return m.multi_label_metrics([truth[t] for t in texts], [answered[t] for t in texts])


def _thin(curve: dict[str, list[float]], points: int = 400) -> dict[str, list[float]]:
    """At most ``points`` points of a curve, evenly spaced in coverage (enough to plot)."""
    n = len(curve["coverage"])
    keep = np.unique(np.linspace(0, n - 1, min(points, n)).astype(int))
    return {k: [v[i] for i in keep] for k, v in curve.items()}


def _withheld_examples(data: LabeledData, predictions: list, limit: int = 30) -> list[dict]:
    """The first rows answered with less than the full path, and whether the guess was right."""
    rows = []
    for row, p in zip(data.y, predictions, strict=True):
        if p.decision != "full" and len(rows) < limit:
            rows.append(
                {
                    "text": p.text,
                    "truth": format_path(row),
                    "candidate": format_path(p.candidate),
                    "decision": p.decision,
                    "confidence": p.confidence,
                    "reason": p.reason,
                    "candidate_right": tuple(p.candidate) == tuple(row),
                }
            )
    return rows


def train_counts(model: HierarchicalClassifier) -> dict[str, int]:
    return {format_path(p): int(n) for p, n in zip(model.taxonomy_.paths, model.train_counts_, strict=True)}


def write_report(evaluation: Evaluation, out: str | Path, title: str = "shelver evaluation") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(evaluation, title))
    if evaluation.curves:
        from shelver.report_html import write_html

        write_html(evaluation, out, title)
    return out


def summary_table(metrics: dict[str, Any]) -> str:
    """The short table the CLI prints."""
    l1, l2 = metrics["level1"], metrics["level2"]
    tail = "n/a" if l2["tail_macro_f1"] is None else f"{l2['tail_macro_f1']:.3f}"
    return "\n".join(
        [
            "| n | L1 acc | L1 macro-F1 | L2 acc | L2 macro-F1 | L2 tail macro-F1 | hier. F1 |",
            "|---:|---:|---:|---:|---:|---:|---:|",
            f"| {metrics['n']:,} | {l1['accuracy']:.3f} | {l1['macro_f1']:.3f} | {l2['accuracy']:.3f} | "
            f"{l2['macro_f1']:.3f} | {tail} | {metrics['hierarchical_f1']:.3f} |",
        ]
    )


def slice_table(metrics: dict[str, Any]) -> str:
    """L2 accuracy and macro-F1 per frequency band (head >= 500, tail < 50 training rows) and per source."""
    lines = ["| slice | n | classes | L2 acc | L2 macro-F1 |", "|---|---:|---:|---:|---:|"]
    for band, r in metrics.get("by_band", {}).items():
        lines.append(
            f"| {band} | {r['n']:,} | {r['n_classes']} | {r['accuracy']:.3f} | {r['macro_f1']:.3f} |"
        )
    for source, r in metrics.get("by_source", {}).items():
        l2 = r["level2"]
        lines.append(f"| source: {source} | {r['n']:,} | | {l2['accuracy']:.3f} | {l2['macro_f1']:.3f} |")
    return "\n".join(lines)


def confidence_table(metrics: dict[str, Any]) -> str:
    """Coverage at precision, ECE before/after and the operating point, per level."""
    if "coverage_at_precision" not in metrics:
        return ""
    lines = [
        "| level | cov@0.90 | cov@0.95 | cov@0.99 | ECE before | ECE after | threshold | coverage "
        "| sel. acc. |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for level in ("level1", "level2"):
        cov, sel = metrics["coverage_at_precision"][level], metrics["selective"][level]
        lines.append(
            f"| {level} | {cov['0.9']:.3f} | {cov['0.95']:.3f} | {cov['0.99']:.3f} | "
            f"{metrics['ece_before_calibration'][level]:.3f} | {metrics['ece'][level]:.3f} | "
            f"{metrics['thresholds'][level]:.3f} | {sel['coverage']:.3f} | {sel['selective_accuracy']:.3f} |"
        )
    lines += [
        "",
        f"Back-off risk-coverage area (one threshold, full path then category): "
        f"{metrics['hierarchical_aurc']:.4f} (lower is better).",
    ]
    if "multi_label" in metrics:
        ml = metrics["multi_label"]
        lines += [
            "",
            "| texts | multi-label texts | example F1 | subset accuracy | coverage |",
            "|---:|---:|---:|---:|---:|",
            f"| {ml['n_texts']:,} | {ml['n_multi_label_texts']:,} | {ml['example_f1']:.3f} | "
            f"{ml['subset_accuracy']:.3f} | {ml['coverage']:.3f} |",
        ]
    return "\n".join(lines)


def selection_table(selection: dict[str, Any]) -> str:
    """Every candidate ``train_model`` scored, the chosen one marked, and per_group's margin."""
    lines = [
        f"Chosen on {selection['scored_on']} ({selection['n_scored']:,} rows) by "
        f"{selection['metric'].replace('_', ' ')}: {selection['rule']}. The first fit includes encoding "
        "and the vocabulary that every candidate reuses.",
        "",
        "| | head | class weights | L2 acc | behind best (SE) | L2 macro-F1 | L1 acc | fit s |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    chosen = selection["chosen"]
    for row in selection["candidates"]:
        mark = "chosen" if all(row[k] == v for k, v in chosen.items()) else ""
        head = row["head"] + (f" ({row['router']} router)" if row.get("router") else "")
        lines.append(
            f"| {mark} | {head} | {row['class_weight'] or 'none'} | {row['level2_accuracy']:.4f} | "
            f"{row['behind_best']:.4f} ({row['behind_best_se']:.4f}) | {row['level2_macro_f1']:.4f} | "
            f"{row['level1_accuracy']:.4f} | {row['fit_seconds']:.1f} |"
        )
    margin = selection.get("per_group_minus_flat")
    if margin is not None:
        verdict = f"won by {margin * 100:.2f} points" if margin > 0 else f"lost by {-margin * 100:.2f} points"
        verdict = verdict if margin else "tied"
        lines += ["", f"per_group {verdict} against flat (the best of each, {selection['metric']})."]
    return "\n".join(lines)


def render_markdown(evaluation: Evaluation, title: str) -> str:
    worst = sorted(evaluation.per_class, key=lambda r: (r["f1"], -r["support"]))[:15]
    lines = [f"# {title}", "", summary_table(evaluation.metrics), ""]
    selection = evaluation.metrics.get("model", {}).get("selection")
    if selection:
        lines += ["## Model selection", "", selection_table(selection), ""]
    if "calibration" in evaluation.metrics:
        lines += [f"**Thresholds**: {evaluation.metrics['calibration']['summary']}.", ""]
    if evaluation.metrics.get("by_band") or evaluation.metrics.get("by_source"):
        lines += [
            "## Slices: frequency band (training rows) and source",
            "",
            slice_table(evaluation.metrics),
            "",
        ]
    confidence = confidence_table(evaluation.metrics)
    if confidence:
        lines += ["## Confidence: coverage at precision, calibration, decisions", "", confidence, ""]
    lines += [
        "## Worst subcategories",
        "",
        "| subcategory | support | train rows | precision | recall | F1 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {r['subcategory']} | {r['support']} | {r['train_count']} | {r['precision']:.2f} | "
        f"{r['recall']:.2f} | {r['f1']:.2f} |"
        for r in worst
    ]
    lines += ["", "## Most confused pairs", "", "| true | predicted | count |", "|---|---|---:|"]
    lines += [f"| {r['true']} | {r['predicted']} | {r['count']} |" for r in evaluation.confused]
    lines += ["", "## Accuracy per category", "", "| category | n | L2 accuracy |", "|---|---:|---:|"]
    lines += [f"| {r['category']} | {r['n']} | {r['accuracy']:.3f} |" for r in evaluation.per_group]
    return "\n".join(lines) + "\n"
