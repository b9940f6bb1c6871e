"""The evaluate stage: the LLM-labeled held-out split and the real labeled sample, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shelver.pipeline.runner import RunContext, file_hash


def _evaluate_inputs(ctx: RunContext) -> dict[str, Any]:
    return {"labeled_sample": file_hash(ctx.labeled_sample) if ctx.labeled_sample else None}


def _evaluate_run(ctx: RunContext, directory: Path) -> dict[str, Any]:
    from shelver.data import read_labeled
    from shelver.model_dir import load_model
    from shelver.report import evaluate, write_report

    model = load_model(ctx.stage_dir("train") / "model").set_params(progress=ctx.progress)
    sets = {"llm_heldout": read_labeled(ctx.stage_dir("select") / "valid.csv", ctx.taxonomy)}
    if ctx.labeled_sample is not None:
        sets["real_sample"] = read_labeled(ctx.labeled_sample, ctx.taxonomy)
    metrics = {}
    for name, data in sets.items():
        evaluation = evaluate(model, data)
        write_report(evaluation, directory / name, title=f"bootstrap: {name} ({data.origin})")
        metrics[name] = evaluation.metrics
    table = comparison(metrics)
    (directory / "comparison.json").write_text(json.dumps(table, indent=2) + "\n")
    (directory / "report.md").write_text(render_comparison(table))
    return {"sets": {k: v["n"] for k, v in metrics.items()}}


COMPARED = (
    ("L1 accuracy", ("level1", "accuracy")),
    ("L1 macro-F1", ("level1", "macro_f1")),
    ("L2 accuracy", ("level2", "accuracy")),
    ("L2 macro-F1", ("level2", "macro_f1")),
    ("hierarchical F1", ("hierarchical_f1",)),
    ("L1 coverage @ precision 0.9", ("coverage_at_precision", "level1", "0.9")),
    ("L2 coverage @ precision 0.9", ("coverage_at_precision", "level2", "0.9")),
    ("L2 ECE", ("ece", "level2")),
    ("answered (full path)", ("selective", "level2", "coverage")),
)


def comparison(metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One row per metric: each evaluation set, and the gap (real sample minus LLM-labeled)."""
    rows = []
    for label, keys in COMPARED:
        row: dict[str, Any] = {"metric": label}
        for name, values in metrics.items():
            row[name] = _dig(values, keys)
        if "real_sample" in row and row["real_sample"] is not None and row["llm_heldout"] is not None:
            row["gap"] = row["real_sample"] - row["llm_heldout"]
        rows.append(row)
    return {"n": {k: v["n"] for k, v in metrics.items()}, "rows": rows}


def _dig(values: dict[str, Any], keys: tuple[str, ...]) -> float | None:
    for key in keys:
        if not isinstance(values, dict) or key not in values:
            return None
        values = values[key]
    return None if values is None else float(values)


def render_comparison(table: dict[str, Any]) -> str:
    sets = list(table["n"])
    has_gap = "real_sample" in sets
    header = [
        "metric",
        *[f"{s} (n={table['n'][s]:,})" for s in sets],
        *(["gap (real - LLM)"] if has_gap else []),
    ]
    lines = [
        "# bootstrap: how good is the model?",
        "",
        "`llm_heldout`: the held-out share of the LLM-labeled log (labels from the labeler, not people).",
        "`real_sample`: the labeled sample of real queries, when given (never trained on).",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in table["rows"]:
        cells = [_fmt(row.get(s)) for s in sets] + ([_fmt(row.get("gap"), signed=True)] if has_gap else [])
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"
