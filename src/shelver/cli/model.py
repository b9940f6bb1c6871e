"""The model: fine-tune the encoder, train, calibrate, evaluate and predict."""

from __future__ import annotations

import json
from pathlib import Path

import click

from shelver.cli.common import (
    ConfigOption,
    existing_file,
    given_overrides,
    main,
    model_option,
    taxonomy_option,
    train_option,
)
from shelver.config import DecisionConfig


@main.command()
@taxonomy_option
@train_option
@click.option(
    "--valid", "valid_path", type=existing_file, help="Labeled validation data (evaluated after fit)."
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--config", "config_path", type=existing_file, help="TOML configuration.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--target-precision",
    cls=ConfigOption,
    config_key="decision.target_precision",
    type=float,
    help="Choose thresholds on --valid so each level reaches this precision (e.g. 0.95).",
)
@click.option(
    "--multi-label",
    cls=ConfigOption,
    config_key="decision.multi_label",
    is_flag=True,
    help="Texts may have several paths ('A > B | C > D').",
)
def train(
    taxonomy_path: Path,
    train_path: Path,
    valid_path: Path | None,
    out: Path,
    config_path: Path | None,
    overrides: tuple[str, ...],
    quiet: bool,
    target_precision: float | None,
    multi_label: bool,
) -> None:
    """Train a hierarchical classifier (calibrated on --valid when given) and save it to --out.

    Settings left at "auto" (the head, its class weights) are chosen on --valid, or on a held-out
    tenth of --train without it; selection.json in --out lists every candidate's score."""
    from shelver.config import load_config
    from shelver.data import read_labeled
    from shelver.taxonomy import Taxonomy
    from shelver.training import train_model

    overrides += given_overrides(click.get_current_context())
    config = load_config(config_path, overrides)
    taxonomy = Taxonomy.load(taxonomy_path)
    data = read_labeled(train_path, taxonomy)
    valid = read_labeled(valid_path, taxonomy) if valid_path else None
    out.mkdir(parents=True, exist_ok=True)
    config.write(out / "train_config.json")  # written before anything runs
    model = train_model(config, taxonomy, data, progress=not quiet, valid=valid, workdir=out)
    model.save(out)
    if getattr(model, "selection_", None) is not None:
        from shelver.report import selection_table

        click.echo(f"model selection:\n{selection_table(model.selection_)}\n")
    click.echo(f"saved model to {out} ({len(data):,} training rows, head={model.head})", err=True)
    if valid is not None:
        _evaluate_and_print(model, valid, out / "valid", model_dir=out)


@main.command("config")
@click.option(
    "--bootstrap", "for_bootstrap", is_flag=True, help="All of bootstrap's stages, not train's keys alone."
)
@click.option("--config", "config_path", type=existing_file, help="TOML configuration to resolve.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
def show_config(for_bootstrap: bool, config_path: Path | None, overrides: tuple[str, ...]) -> None:
    """Print the configuration 'train' (or 'bootstrap') would run with, as TOML: every key, its
    value and the measured reason for its default. Save it to start a config file of your own."""
    from shelver.config import load_config
    from shelver.config_reference import commented_toml

    if for_bootstrap:
        from shelver.pipeline.config import load_bootstrap_config

        click.echo(commented_toml(load_bootstrap_config(config_path, overrides)))
    else:
        click.echo(commented_toml(load_config(config_path, overrides)))


@main.command()
@model_option
@click.option("--data", "data_path", required=True, type=existing_file, help="Labeled data to score.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report directory to write.")
@click.option(
    "--taxonomy", "taxonomy_path", type=existing_file, help="Refuse if the model's taxonomy differs."
)
def evaluate(model_dir: Path, data_path: Path, out: Path, taxonomy_path: Path | None) -> None:
    """Score a model on labeled data; write metrics.json and report.md to --out."""
    from shelver.data import read_labeled

    model = _load(model_dir, taxonomy_path).set_params(progress=True)
    _evaluate_and_print(model, read_labeled(data_path, model.taxonomy_), out, model_dir=model_dir)


@main.command()
@model_option
@click.option(
    "--input",
    "input_path",
    type=existing_file,
    help="Queries: text lines, or CSV/Parquet/JSONL "
    "with a 'text' column. Default: stdin, one query per line.",
)
@click.option("--text-column", default="text", show_default=True, help="Column holding the queries.")
@click.option("--batch-size", default=1024, show_default=True, help="Queries classified at a time.")
def predict(model_dir: Path, input_path: Path | None, text_column: str, batch_size: int) -> None:
    """Classify queries; write one JSON object per query to stdout."""
    from tqdm.auto import tqdm

    from shelver.calibration import describe_fitted_on
    from shelver.data import read_queries

    model = _load(model_dir, None).set_params(progress=False)
    click.echo(describe_fitted_on(model.calibrated_on_), err=True)  # what the decisions promise
    queries = read_queries(input_path, text_column)
    starts = range(0, len(queries), batch_size)
    # a bar (on stderr) only where the wait is long enough to need one
    for start in tqdm(starts, desc="classifying", unit="batch", disable=len(queries) < 20_000):
        for prediction in model.classify(queries[start : start + batch_size]):
            click.echo(json.dumps(prediction.to_dict(), ensure_ascii=False))


def _load(model_dir: Path, taxonomy_path: Path | None):
    from shelver.model_dir import load_model
    from shelver.taxonomy import Taxonomy

    taxonomy = Taxonomy.load(taxonomy_path) if taxonomy_path else None
    return load_model(model_dir, taxonomy=taxonomy)


def _evaluate_and_print(model, data, out: Path, model_dir: Path | None = None) -> None:
    from shelver.report import confidence_table, evaluate, summary_table, write_report

    evaluation = evaluate(model, data)
    write_report(evaluation, out, title=f"{data.origin}: {model.head} head")
    if model_dir is not None and out.resolve().parent == model_dir.resolve():
        from shelver.model_dir import refresh_model_card

        refresh_model_card(model_dir)  # DIR/valid, DIR/test: the model card shows the figures
    tables = f"{summary_table(evaluation.metrics)}\n\n{confidence_table(evaluation.metrics)}"
    click.echo(
        f"{data.origin}:\n{tables}\n{evaluation.metrics['calibration']['summary']}\nreport: {out}/report.html"
    )


# ---- calibration, thresholds, decisions ------------------------------------------------------
@main.command()
@model_option
@click.option("--valid", "valid_path", required=True, type=existing_file, help="Labeled validation data.")
@click.option(
    "--target-precision", type=float, help="Choose thresholds so each level reaches this precision."
)
@click.option("--thresholds", help="Set the thresholds by hand instead: LEVEL1,LEVEL2 (e.g. 0.5,0.7).")
@click.option(
    "--delta",
    type=float,
    help="Certify each level's precision with probability 1 - DELTA (default: the model's, "
    f"{DecisionConfig.delta} unless trained otherwise).",
)
@click.option("--point-estimate", is_flag=True, help="Thresholds from the point estimate, with no guarantee.")
def calibrate(
    model_dir: Path,
    valid_path: Path,
    target_precision: float | None,
    thresholds: str | None,
    delta: float | None,
    point_estimate: bool,
) -> None:
    """Re-fit temperatures and thresholds of a trained model on --valid, without retraining.

    Human-labeled rows of --valid (no 'source' column: all of them) set the thresholds; machine
    labels do only when no row is human-labeled, and the thresholds then say they are unverified.
    """
    from shelver.data import read_labeled

    model = _load(model_dir, None)
    if target_precision is not None or thresholds is not None:
        model.set_params(target_precision=target_precision, thresholds=_parse_thresholds(thresholds))
    if delta is not None or point_estimate:
        model.set_params(delta=None if point_estimate else delta)
    valid = read_labeled(valid_path, model.taxonomy_)
    model.calibrate(valid.texts, valid.y, valid.source)
    model.save(model_dir)
    t = model.thresholds_
    click.echo(
        f"calibrated {model_dir} on {valid.origin}: thresholds {t.level1:.4f} / {t.level2:.4f}", err=True
    )
    _evaluate_and_print(model, valid, model_dir / "valid", model_dir=model_dir)


def _parse_thresholds(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        level1, level2 = (float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LEVEL1,LEVEL2 such as 0.5,0.7, got {text!r}") from None
    return level1, level2


# ---- representation learning ------------------------------------------------------------------
@main.command()
@taxonomy_option
@train_option
@click.option("--valid", "valid_path", type=existing_file, help="Labeled data for early stopping.")
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Directory for the fine-tuned encoder."
)
@click.option("--config", "config_path", type=existing_file, help="TOML configuration ([encoder] keys).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option(
    "--end-to-end",
    "e2e_out",
    type=click.Path(path_type=Path),
    help="Also save the end-to-end baseline (the encoder predicting with its own head) as a model here.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def finetune(
    taxonomy_path: Path,
    train_path: Path,
    valid_path: Path | None,
    out: Path,
    config_path: Path | None,
    overrides: tuple[str, ...],
    e2e_out: Path | None,
    quiet: bool,
) -> None:
    """Fine-tune the encoder on labeled data and save it (without its head) to --out."""
    from shelver.config import load_config
    from shelver.data import read_labeled
    from shelver.errors import ConfigError
    from shelver.finetune import end_to_end_model, finetune_encoder
    from shelver.taxonomy import Taxonomy

    config = load_config(config_path, overrides)
    if e2e_out is not None and config.encoder.objective != "classification":
        raise ConfigError("--end-to-end needs encoder.objective=classification: only it trains a head")
    taxonomy = Taxonomy.load(taxonomy_path)
    data = read_labeled(train_path, taxonomy)
    valid = read_labeled(valid_path, taxonomy) if valid_path else None
    result = finetune_encoder(
        config.encoder, taxonomy, data, out, valid=valid, seed=config.seed, progress=not quiet
    )
    click.echo(f"saved {config.encoder.objective} encoder to {out} ({result.steps} steps)", err=True)
    if e2e_out is not None:
        end_to_end_model(result, taxonomy, data, config.encoder).save(e2e_out)
        click.echo(f"saved end-to-end model to {e2e_out}", err=True)


@main.command()
@click.option(
    "--encoder",
    "source",
    cls=ConfigOption,
    config_key="encoder.name",
    show_default=True,
    help="The sentence-transformers model to distill: 'minilm' or a local directory (e.g. a fine-tuned one).",
)
@click.option(
    "--out", required=True, type=click.Path(path_type=Path), help="Directory for the static encoder."
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def distill(source: str, out: Path, quiet: bool) -> None:
    """Distill static token embeddings from an encoder: the fastest CPU encoder ('static:OUT')."""
    from shelver.encoders.static import distill as distill_static

    encoder = distill_static(source, out, progress=not quiet)
    click.echo(
        f"saved a {encoder.dim}-d static encoder of {len(encoder.vectors):,} tokens to {out}; "
        f"train with --set encoder.name=static:{out}",
        err=True,
    )
