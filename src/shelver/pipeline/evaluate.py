"""The evaluate stage: the LLM-labeled held-out split and the real labeled sample, side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shelver.pipeline.runner import RunContext, file_hash


def inputs(ctx: RunContext) -> dict[str, Any]:
    return {"labeled_sample": file_hash(ctx.labeled_sample) if ctx.labeled_sample else None}


def run(ctx: RunContext, directory: Path) -> dict[str, Any]:
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
    table["thresholds"] = thresholds_section(model.calibrated_on_)
    (directory / "comparison.json").write_text(json.dumps(table, indent=2) + "\n")
    (directory / "report.md").write_text(render_comparison(table))
    return {"sets": {k: v["n"] for k, v in metrics.items()}, "thresholds": table["thresholds"]["summary"]}


def thresholds_section(fitted_on: dict[str, Any] | None) -> dict[str, Any]:
    """What the thresholds promise: the one-line summary and, per level, the figures measured
    on the rows that fitted them (out of fold when the labeled sample also trained)."""
    from shelver.calibration import describe_fitted_on

    fitted_on = fitted_on or {}
    return {
        "summary": describe_fitted_on(fitted_on or None),
        "verified": bool(fitted_on.get("human")),
        "cross_fitted": fitted_on.get("cross_fitted_folds") is not None,
        "levels": fitted_on.get("levels", {}),
    }


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
        "`real_sample`: the labeled sample of real queries, when given. With enough rows it also trains",
        "the model (human labels outrank machine ones), so its accuracy here is in-sample; the honest",
        "figures are the thresholds' own, measured out of fold (below).",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in table["rows"]:
        cells = [_fmt(row.get(s)) for s in sets] + ([_fmt(row.get("gap"), signed=True)] if has_gap else [])
        lines.append(f"| {row['metric']} | " + " | ".join(cells) + " |")
    return "\n".join(lines + _thresholds_lines(table.get("thresholds"))) + "\n"


def _thresholds_lines(section: dict[str, Any] | None) -> list[str]:
    if not section:
        return []
    lines = ["", "## Thresholds", "", f"{section['summary']}.", ""]
    if section["levels"]:
        where = "out of fold" if section["cross_fitted"] else "on the calibration rows"
        lines += [
            f"| level | threshold | coverage ({where}) | precision | certified lower bound | labels needed |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for level, fit in section["levels"].items():
            need = "" if fit.get("labels_needed") is None else f"{fit['labels_needed']:,}"
            lines.append(
                f"| {level} | {min(fit['threshold'], 1.0):.3f} | {fit['coverage']:.3f} | "
                f"{fit['precision']:.3f} | {fit['lower_bound']:.3f} | {need} |"
            )
    return lines


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.3f}" if signed else f"{value:.3f}"
