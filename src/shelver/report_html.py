"""``report.html``: the evaluation as a page people would rather look at than read.

Figures are PNG files next to the page (so the page works offline and in a file browser);
tables are plain HTML, every value escaped.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shelver import plots

if TYPE_CHECKING:
    from shelver.report import Evaluation

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
table { border-collapse: collapse; margin: 0.6em 0 1.4em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.figs img { max-width: 100%; border: 1px solid #eee; margin: 0.4em 0; }
.note { color: #555; font-size: 0.9em; } .bad { color: #b00; } .good { color: #070; }
"""


def write_html(evaluation: Evaluation, out: Path, title: str) -> Path:
    figures = _figures(evaluation, out)
    body = [f"<h1>{_e(title)}</h1>", _headline(evaluation.metrics)]
    body += ["<h2>Figures</h2>", '<div class="figs">']
    body += [f'<p><img src="{name}" alt="{_e(alt)}"></p>' for name, alt in figures]
    body += ["</div>", _worst_table(evaluation), _confused_table(evaluation), _withheld_table(evaluation)]
    page = (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{_e(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n"
    )
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _figures(evaluation: Evaluation, out: Path) -> list[tuple[str, str]]:
    metrics = evaluation.metrics
    eces = {"before": metrics["ece_before_calibration"], "after": metrics["ece"]}
    plots.risk_coverage_plot(evaluation.curves, metrics["selective"], out / "risk_coverage.png")
    plots.reliability_plot(evaluation.reliability, eces, out / "reliability.png")
    plots.per_group_plot(evaluation.per_group, out / "per_group_accuracy.png")
    figures = [
        ("risk_coverage.png", "risk against coverage per level"),
        ("reliability.png", "reliability diagrams before and after calibration"),
        ("per_group_accuracy.png", "level-2 accuracy per category with counts"),
    ]
    if evaluation.confused:
        plots.confused_pairs_plot(evaluation.confused, out / "confused_pairs.png")
        figures.append(("confused_pairs.png", "most confused subcategory pairs"))
    return figures


def _headline(metrics: dict[str, Any]) -> str:
    l1, l2 = metrics["level1"], metrics["level2"]
    rows = [
        ["rows", f"{metrics['n']:,}", ""],
        ["accuracy (arg-max path)", f"{l1['accuracy']:.3f}", f"{l2['accuracy']:.3f}"],
        ["macro-F1", f"{l1['macro_f1']:.3f}", f"{l2['macro_f1']:.3f}"],
    ]
    for target in ("0.9", "0.95", "0.99"):
        cov = metrics["coverage_at_precision"]
        rows.append(
            [
                f"coverage at precision {target}",
                f"{cov['level1'][target]:.3f}",
                f"{cov['level2'][target]:.3f}",
            ]
        )
    ece, before = metrics["ece"], metrics["ece_before_calibration"]
    rows.append(
        ["ECE before -> after calibration"]
        + [f"{before[lv]:.3f} -> {ece[lv]:.3f}" for lv in ("level1", "level2")]
    )
    rows.append(["threshold"] + [f"{metrics['thresholds'][lv]:.3f}" for lv in ("level1", "level2")])
    for key, label in (
        ("coverage", "answered at the threshold"),
        ("selective_accuracy", "accuracy of those answers"),
    ):
        rows.append([label] + [f"{metrics['selective'][lv][key]:.3f}" for lv in ("level1", "level2")])
    decisions = ", ".join(f"{k}: {v:,}" for k, v in metrics["decisions"].items())
    note = (
        '<p class="note">Coverage at precision p: the largest share of rows the model can answer '
        "with precision p when the most confident are answered first (thresholds set on these rows; "
        f"the model's own thresholds were set on validation data). Decisions: {_e(decisions)}.</p>"
    )
    table = _table(["", "level 1 (category)", "level 2 (subcategory)"], rows, numeric=(1, 2))
    return "<h2>Summary</h2>" + table + note + _multi_label_block(metrics)


def _multi_label_block(metrics: dict[str, Any]) -> str:
    ml = metrics.get("multi_label")
    if not ml:
        return ""
    keys = (
        "n_texts",
        "n_multi_label_texts",
        "example_f1",
        "subset_accuracy",
        "coverage",
        "mean_paths_answered",
    )
    cells = [[k.replace("_", " "), f"{ml[k]:,}" if isinstance(ml[k], int) else f"{ml[k]:.3f}"] for k in keys]
    return "<h3>Multi-label answers (distinct texts)</h3>" + _table(["", "value"], cells, numeric=(1,))


def _worst_table(evaluation: Evaluation) -> str:
    worst = sorted(evaluation.per_class, key=lambda r: (r["f1"], -r["support"]))[:20]
    rows = [
        [
            r["subcategory"],
            r["support"],
            r["train_count"],
            f"{r['precision']:.2f}",
            f"{r['recall']:.2f}",
            f"{r['f1']:.2f}",
        ]
        for r in worst
    ]
    header = ["subcategory", "support", "train rows", "precision", "recall", "F1"]
    return "<h2>Worst subcategories</h2>" + _table(header, rows, numeric=(1, 2, 3, 4, 5))


def _confused_table(evaluation: Evaluation) -> str:
    rows = [[r["true"], r["predicted"], r["count"]] for r in evaluation.confused]
    return "<h2>Most confused pairs</h2>" + _table(["true", "predicted", "count"], rows, numeric=(2,))


def _withheld_table(evaluation: Evaluation) -> str:
    if not evaluation.withheld:
        return "<h2>Withheld answers</h2><p>Every row was answered with its full path.</p>"
    rows = [
        [
            r["text"],
            r["truth"],
            r["candidate"],
            "yes" if r["candidate_right"] else "no",
            r["decision"],
            " / ".join(f"{c:.2f}" for c in r["confidence"]),
            r["reason"],
        ]
        for r in evaluation.withheld
    ]
    header = ["text", "true path", "best guess", "guess right?", "decision", "confidence", "reason"]
    intro = (
        '<p class="note">Rows answered with the category only, or not at all (first ones in file order).</p>'
    )
    return "<h2>Withheld answers</h2>" + intro + _table(header, rows, numeric=())


def _table(header: list[str], rows: list[list[Any]], numeric: tuple[int, ...]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if i in numeric else ''}>{_e(v)}</td>" for i, v in enumerate(row))
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _e(value: Any) -> str:
    return html.escape(str(value))
