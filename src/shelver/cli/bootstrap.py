"""Cold start: ``shelver bootstrap``, a taxonomy and a raw search log to a model (shelver.pipeline)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from shelver.cli.common import existing_file, labeling_backend_options, main, taxonomy_option


@main.command()
@taxonomy_option
@click.option(
    "--log",
    "log_path",
    required=True,
    type=existing_file,
    help="Unlabeled search log ('text', optional 'count').",
)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Run directory.")
@click.option(
    "--config",
    "config_path",
    type=existing_file,
    help="TOML: [label] [select] [synthesize] [train] [export] [review].",
)
@click.option(
    "--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override, e.g. select.min_confidence=0.6."
)
@click.option(
    "--labeled-sample",
    "sample_path",
    type=existing_file,
    help="Real queries with labels: scored beside the LLM labels.",
)
@click.option(
    "--from",
    "start_from",
    help="Re-run from this stage (label, select, synthesize, train, evaluate, export, review).",
)
@labeling_backend_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--verbose", is_flag=True, help="llama.cpp's own log on the terminal, not in OUT/llamacpp.log.")
def bootstrap(
    taxonomy_path: Path,
    log_path: Path,
    out: Path,
    config_path: Path | None,
    overrides: tuple[str, ...],
    sample_path: Path | None,
    start_from: str | None,
    backends: tuple[str, ...],
    model: str | None,
    base_url: str | None,
    options: tuple[str, ...],
    quiet: bool,
    verbose: bool,
) -> None:
    """Label a raw log, train, calibrate, evaluate, export and list queries to review; resumable.

    Every key of --config and --set, its default and the measured reason for it:
    'shelver config --bootstrap'.

    Synthetic rows that duplicate training text or copy the held-out split or --labeled-sample are
    dropped; kept rows (source synthetic:*) train but never count toward the tail bands.
    """
    from shelver.labeling.backends.llamacpp import llama_log
    from shelver.pipeline import RunContext, load_bootstrap_config, run_pipeline

    config = load_bootstrap_config(
        config_path, overrides + _label_overrides(backends, model, base_url, options)
    )
    ctx = RunContext(taxonomy_path, log_path, out, config, sample_path, progress=not quiet)
    with llama_log(out, config.label.backends, verbose):
        run_pipeline(ctx, start_from, echo=lambda line: click.echo(line, err=True))
    click.echo((out / "evaluate" / "report.md").read_text())
    click.echo(
        f"model: {out}/export/model; queries to review: {out}/review/review.csv; to certify the "
        f"thresholds, label all of {out}/review/calibration_sample.csv",
        err=True,
    )
    _say_what_the_thresholds_promise(out)


def _say_what_the_thresholds_promise(out: Path) -> None:
    """The last line of a run: certified thresholds, or a plain warning that they are unverified."""
    from shelver.pipeline import read_manifest

    summary = (read_manifest(out / "train") or {}).get("summary", {}).get("thresholds", "")
    if summary.startswith("thresholds unverified"):
        summary += (
            "; give --labeled-sample (a few hundred real queries, labeled by people) or import "
            "reviewed labels (shelver labels import) to certify them"
        )
    click.echo(summary, err=True)


def _label_overrides(
    backends: tuple[str, ...], model: str | None, base_url: str | None, options: tuple[str, ...]
) -> tuple[str, ...]:
    extra = []
    if backends:
        extra.append(f"label.backends={json.dumps(list(backends))}")
    if model:
        extra.append(f"label.model={json.dumps(model)}")
    if base_url:
        extra.append(f"label.base_url={json.dumps(base_url)}")
    if options:
        extra.append(f"label.options={json.dumps(list(options))}")
    return tuple(extra)
