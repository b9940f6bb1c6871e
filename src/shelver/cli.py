"""The ``shelver`` command: thin commands over the library.

A user mistake (any ``ShelverError``) prints one line on stderr and exits 1, never a traceback.
Heavy imports happen inside each command so ``shelver --help`` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from shelver.errors import ShelverError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class ShelverGroup(click.Group):
    """Turns library errors into one clear line and exit code 1."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except ShelverError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


@click.group(cls=ShelverGroup)
@click.version_option(package_name="shelver")
def main() -> None:
    """Put every search query on the right shelf of a category > subcategory taxonomy."""


existing_file = click.Path(exists=True, dir_okay=False, path_type=Path)


@main.command()
@click.option(
    "--taxonomy", "taxonomy_path", required=True, type=existing_file, help="Taxonomy (.json/.yaml/.txt)."
)
@click.option("--train", "train_path", required=True, type=existing_file, help="Labeled training data.")
@click.option(
    "--valid", "valid_path", type=existing_file, help="Labeled validation data (evaluated after fit)."
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Model directory to write.")
@click.option("--config", "config_path", type=existing_file, help="TOML configuration.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(
    taxonomy_path: Path,
    train_path: Path,
    valid_path: Path | None,
    out: Path,
    config_path: Path | None,
    overrides: tuple[str, ...],
    quiet: bool,
) -> None:
    """Train a hierarchical classifier and save it to --out."""
    from shelver.config import load_config
    from shelver.data import read_labeled
    from shelver.taxonomy import Taxonomy
    from shelver.training import train_model

    config = load_config(config_path, overrides)
    taxonomy = Taxonomy.load(taxonomy_path)
    data = read_labeled(train_path, taxonomy)
    valid = read_labeled(valid_path, taxonomy) if valid_path else None
    out.mkdir(parents=True, exist_ok=True)
    config.write(out / "train_config.json")  # written before anything runs
    model = train_model(config, taxonomy, data, progress=not quiet)
    model.save(out)
    click.echo(f"saved model to {out} ({len(data):,} training rows, head={config.head.kind})", err=True)
    if valid is not None:
        _evaluate_and_print(model, valid, out / "valid")


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option("--data", "data_path", required=True, type=existing_file, help="Labeled data to score.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Report directory to write.")
@click.option(
    "--taxonomy", "taxonomy_path", type=existing_file, help="Refuse if the model's taxonomy differs."
)
def evaluate(model_dir: Path, data_path: Path, out: Path, taxonomy_path: Path | None) -> None:
    """Score a model on labeled data; write metrics.json and report.md to --out."""
    from shelver.data import read_labeled

    model = _load(model_dir, taxonomy_path).set_params(progress=True)
    _evaluate_and_print(model, read_labeled(data_path, model.taxonomy_), out)


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Model directory.")
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

    from shelver.data import read_queries

    model = _load(model_dir, None).set_params(progress=False)
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


def _evaluate_and_print(model, data, out: Path) -> None:
    from shelver.report import evaluate, summary_table, write_report

    evaluation = evaluate(model, data)
    write_report(evaluation, out, title=f"{data.origin}: {model.head} head")
    click.echo(f"{data.origin}:\n{summary_table(evaluation.metrics)}\nreport: {out}/report.md")


# ---- issue 7: production paths (export, serve, classify-batch) ----------------------------
@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option(
    "--data",
    "data_path",
    type=existing_file,
    help="Texts to check the export on (the validation split is best). Default: taxonomy names.",
)
@click.option("--text-column", default="text", show_default=True, help="Column holding the texts.")
@click.option("--sample", default=2000, show_default=True, help="At most this many texts are checked.")
@click.option(
    "--min-agreement", default=0.995, show_default=True, help="Share of predictions ONNX must match."
)
@click.option("--quantize/--no-quantize", default=True, show_default=True, help="int8 weights (per channel).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def export(
    model_dir: Path,
    data_path: Path | None,
    text_column: str,
    sample: int,
    min_agreement: float,
    quantize: bool,
    quiet: bool,
) -> None:
    """Add an ONNX encoder to --model, checked against PyTorch, for torch-free serving."""
    from shelver.data import read_queries
    from shelver.export import export_onnx

    texts = read_queries(data_path, text_column) if data_path else None
    result = export_onnx(
        model_dir, texts, sample=sample, min_agreement=min_agreement, quantize=quantize, progress=not quiet
    )
    click.echo(
        f"wrote {result.directory} ({result.size_bytes / 1e6:.1f} MB, {result.quantization}) "
        f"in {result.seconds:.0f} s\n{result.check.describe()}",
        err=True,
    )


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, help="TCP port.")
@click.option("--workers", default=1, show_default=True, help="Processes, each with its own model copy.")
@click.option("--log-level", default="info", show_default=True, help="uvicorn's log level.")
def serve(model_dir: Path, host: str, port: int, workers: int, log_level: str) -> None:
    """Serve --model over HTTP (POST /v1/classify); limits come from SHELVER_* variables."""
    from shelver.service.server import run_server

    run_server(model_dir, host, port, workers, log_level)


@main.command("classify-batch")
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option(
    "--input",
    "input_path",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Parquet/CSV file, or a folder of partitions.",
)
@click.option(
    "--output",
    "output_path",
    required=True,
    type=click.Path(path_type=Path),
    help="Parquet file to write (a folder of parts with --engine ray).",
)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--text-column", default="text", show_default=True, help="Column holding the queries.")
@click.option("--batch-rows", default=2048, show_default=True, help="Rows classified at a time.")
@click.option("--ray-address", help="A Ray cluster's address (default: start Ray on this machine).")
@click.option("--actors", type=int, help="Ray actors, each with its own model (default: one per CPU).")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def classify_batch(
    model_dir: Path,
    input_path: Path,
    output_path: Path,
    engine: str,
    text_column: str,
    batch_rows: int,
    ray_address: str | None,
    actors: int | None,
    quiet: bool,
) -> None:
    """Classify a table of queries into Parquet with decision columns, in input order."""
    from shelver.batch import classify_batch as run

    result = run(
        model_dir,
        input_path,
        output_path,
        engine=engine,
        text_column=text_column,
        batch_rows=batch_rows,
        progress=not quiet,
        ray_address=ray_address,
        actors=actors,
    )
    click.echo(
        f"classified {result.rows:,} rows in {result.seconds:.1f} s ({result.rows_per_second:,.0f} rows/s, "
        f"{engine}) -> {result.output}",
        err=True,
    )


if __name__ == "__main__":
    main()
