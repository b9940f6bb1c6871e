"""Evaluate a model on labeled data and write ``metrics.json`` and ``report.md``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from shelver import metrics as m
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


def evaluate(model: HierarchicalClassifier, data: LabeledData) -> Evaluation:
    predicted = model.predict(data.texts)
    counts = train_counts(model)
    result = m.classification_metrics(data.y, predicted, counts)
    result["model"] = {"head": model.head, "encoder": model.encoder_.spec}
    sources = np.array(data.source)
    if len(set(sources)) > 1:  # real, LLM-labeled and synthetic traffic are measured apart
        result["by_source"] = {
            s: m.classification_metrics(data.y[sources == s], predicted[sources == s], counts)
            for s in sorted(set(sources))
        }
    return Evaluation(
        result,
        m.per_class(data.y, predicted, counts),
        m.confused_pairs(data.y, predicted),
        m.per_group_accuracy(data.y, predicted),
    )


def train_counts(model: HierarchicalClassifier) -> dict[str, int]:
    return {format_path(p): int(n) for p, n in zip(model.taxonomy_.paths, model.train_counts_, strict=True)}


def write_report(evaluation: Evaluation, out: str | Path, title: str = "shelver evaluation") -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=2) + "\n")
    (out / "report.md").write_text(render_markdown(evaluation, title))
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


def render_markdown(evaluation: Evaluation, title: str) -> str:
    worst = sorted(evaluation.per_class, key=lambda r: (r["f1"], -r["support"]))[:15]
    lines = [f"# {title}", "", summary_table(evaluation.metrics), ""]
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
