"""Production: export to ONNX, serve over HTTP, classify tables in batch."""

from __future__ import annotations

from pathlib import Path

import click

from shelver.cli.common import existing_file, main, model_option, stage_option
from shelver.config import INT8_CHOICES, ExportStage


@main.command()
@model_option
@click.option(
    "--data",
    "data_path",
    type=existing_file,
    help="Texts to check the export on (the validation split is best). Default: taxonomy names.",
)
@click.option("--text-column", default="text", show_default=True, help="Column holding the texts.")
@stage_option(ExportStage, "sample", type=int, help="At most this many texts are checked.")
@stage_option(ExportStage, "min_agreement", type=float, help="Share of predictions ONNX must match.")
@stage_option(ExportStage, "quantize", "--quantize/--no-quantize", help="int8 weights (per channel).")
@stage_option(
    ExportStage,
    "int8",
    type=click.Choice(INT8_CHOICES),
    help="Activation scales: one per token (a batch moves no answer) or one per call (faster).",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
def export(
    model_dir: Path,
    data_path: Path | None,
    text_column: str,
    sample: int,
    min_agreement: float,
    quantize: bool,
    int8: str,
    quiet: bool,
) -> None:
    """Add an ONNX encoder to --model, checked against PyTorch, for torch-free serving."""
    from shelver.data import read_queries
    from shelver.export import export_onnx

    texts = read_queries(data_path, text_column) if data_path else None
    result = export_onnx(
        model_dir,
        texts,
        sample=sample,
        min_agreement=min_agreement,
        quantize=quantize,
        int8=int8,
        progress=not quiet,
    )
    click.echo(
        f"wrote {result.directory} ({result.size_bytes / 1e6:.1f} MB, {result.quantization}) "
        f"in {result.seconds:.0f} s\n{result.check.describe()}",
        err=True,
    )


@main.command()
@model_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, help="TCP port.")
@click.option("--workers", default=1, show_default=True, help="Processes, each with its own model copy.")
@click.option("--log-level", default="info", show_default=True, help="uvicorn's log level.")
def serve(model_dir: Path, host: str, port: int, workers: int, log_level: str) -> None:
    """Serve --model over HTTP (POST /v1/classify); limits come from SHELVER_* variables."""
    from shelver.service.server import run_server

    run_server(model_dir, host, port, workers, log_level)


@main.command("classify-batch")
@model_option
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
    help="Parquet file to write, or .csv (lists as JSON text); with --engine ray, a new or empty "
    "folder of Parquet parts in input order.",
)
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--text-column", default="text", show_default=True, help="Column holding the queries.")
@click.option("--batch-rows", default=2048, show_default=True, help="Rows classified at a time.")
@click.option(
    "--shard-rows",
    default=50_000,
    show_default=True,
    help="Consecutive rows per shard: one Ray task and one output part each.",
)
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
    shard_rows: int,
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
        shard_rows=shard_rows,
        progress=not quiet,
        ray_address=ray_address,
        actors=actors,
    )
    click.echo(
        f"classified {result.rows:,} rows in {result.seconds:.1f} s ({result.rows_per_second:,.0f} rows/s, "
        f"{engine}) -> {result.output}",
        err=True,
    )
