"""The report's PNG figures (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shelver.errors import ConfigError

# "hierarchical": the back-off curve, one threshold for both levels (metrics.hierarchical_risk_coverage)
LEVEL_COLOURS = {"level1": "#1f77b4", "level2": "#d62728", "hierarchical": "#2ca02c"}


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError(
            "the HTML report needs matplotlib: pip install 'shelver[report]' (or matplotlib)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def risk_coverage_plot(curves: dict[str, dict], operating: dict[str, dict], path: Path) -> Path:
    """Risk (1 - precision) against coverage per level, with the model's operating points."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for level, curve in curves.items():
        ax.plot(curve["coverage"], curve["risk"], color=LEVEL_COLOURS[level], label=level)
        point = operating.get(level)
        if point and point["answered"]:
            ax.plot(
                point["coverage"],
                1 - point["selective_accuracy"],
                "o",
                color=LEVEL_COLOURS[level],
                label=f"{level} at its threshold",
            )
    for target in (0.9, 0.95, 0.99):
        ax.axhline(1 - target, color="grey", lw=0.7, ls=":")
        ax.text(0.01, 1 - target, f"precision {target}", fontsize=7, color="grey", va="bottom")
    ax.set(xlabel="coverage (share of queries answered)", ylabel="risk (1 - precision)", xlim=(0, 1))
    ax.set_ylim(0, max(0.12, max((max(c["risk"]) for c in curves.values()), default=0.1) * 1.05))
    ax.set_title("Risk-coverage: answering the most confident queries first")
    ax.legend(fontsize=8, loc="upper left")
    return _save(fig, path)


def reliability_plot(tables: dict[str, dict[str, list[dict]]], eces: dict[str, dict], path: Path) -> Path:
    """Reliability diagrams per level, before and after calibration."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 4.2), squeeze=False)
    for ax, (level, stages) in zip(axes[0], tables.items(), strict=True):
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect calibration")
        for stage, style in (("before", "s:"), ("after", "o-")):
            rows = stages[stage]
            ax.plot(
                [r["confidence"] for r in rows],
                [r["accuracy"] for r in rows],
                style,
                label=f"{stage} calibration (ECE {eces[stage][level]:.3f})",
            )
        ax.set(
            xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"Reliability, {level}"
        )
        ax.legend(fontsize=8, loc="upper left")
        _bin_counts(ax, stages["after"])
    return _save(fig, path)


def _bin_counts(ax: Any, rows: list[dict]) -> None:
    """How many rows each calibrated bin holds, in grey behind the curve: thin bins are noise."""
    counts = ax.twinx()
    centres = [(r["low"] + r["high"]) / 2 for r in rows]
    widths = [r["high"] - r["low"] for r in rows]
    counts.bar(centres, [r["n"] for r in rows], width=widths, color="grey", alpha=0.15)
    counts.set_yscale("log")  # most rows sit in the top bin; a log scale keeps the others visible
    counts.set_ylabel("rows per bin (after calibration, log)", fontsize=8, color="grey")
    counts.tick_params(labelsize=7, colors="grey")
    ax.set_zorder(counts.get_zorder() + 1)  # the curves in front of the bars
    ax.patch.set_visible(False)


def per_group_plot(groups: list[dict], path: Path, limit: int = 40) -> Path:
    """Level-2 accuracy per category, worst first, with the number of rows of each."""
    plt = _pyplot()
    rows = sorted(groups, key=lambda r: (r["accuracy"], -r["n"]))[:limit]
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.24 * len(rows)))
    ax.barh(range(len(rows)), [r["accuracy"] for r in rows], color="#4c72b0")
    for i, r in enumerate(rows):
        ax.text(r["accuracy"] + 0.01, i, f"{r['accuracy']:.2f}  (n={r['n']:,})", va="center", fontsize=7)
    ax.set_yticks(range(len(rows)), [r["category"] for r in rows], fontsize=7)
    ax.invert_yaxis()
    shown = "" if len(groups) <= limit else f" (worst {limit} of {len(groups)})"
    ax.set(xlim=(0, 1.25), xlabel="level-2 accuracy", title=f"Accuracy per category{shown}")
    return _save(fig, path)


def confused_pairs_plot(pairs: list[dict], path: Path) -> Path:
    """The most frequent (true -> predicted) subcategory errors."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.28 * max(len(pairs), 1)))
    labels = [f"{p['true']}  ->  {p['predicted']}" for p in pairs]
    ax.barh(range(len(pairs)), [p["count"] for p in pairs], color="#dd8452")
    ax.set_yticks(range(len(pairs)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set(xlabel="errors", title="Most confused pairs (true -> predicted)")
    return _save(fig, path)
