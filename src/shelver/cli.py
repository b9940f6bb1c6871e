"""The ``shelver`` command: thin commands over the library.

A user mistake (any ``ShelverError``) prints one line on stderr and exits 1, never a traceback.
Heavy imports happen inside each command so ``shelver --help`` is instant.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
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
# options several commands share, spelled once
taxonomy_option = click.option(
    "--taxonomy", "taxonomy_path", required=True, type=existing_file, help="Taxonomy (.json/.yaml/.txt)."
)
train_option = click.option(
    "--train", "train_path", required=True, type=existing_file, help="Labeled training data."
)


def labeling_backend_options(command: Callable) -> Callable:
    """--backend/--model/--base-url/--option, shared by 'shelver label' and 'shelver bootstrap'."""
    for option in reversed(
        [
            click.option(
                "--backend",
                "backends",
                multiple=True,
                metavar="NAME[=MODEL]",
                help="embedding (default, offline) | openai | llamacpp | fake. Repeat to vote.",
            ),
            click.option(
                "--model",
                help="Model of the LLM backend(s): a name for openai, a GGUF path or "
                "'smollm2'/'qwen2.5-coder-1.5b' for llamacpp.",
            ),
            click.option("--base-url", help="openai backend: the endpoint, e.g. http://127.0.0.1:8080/v1."),
            click.option(
                "--option",
                "options",
                multiple=True,
                metavar="[BACKEND.]KEY=VALUE",
                help="Backend option, e.g. openai.structured=none, llamacpp.n_threads=2, "
                "embedding.min_similarity=0.3.",
            ),
        ]
    ):
        command = option(command)
    return command


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
    type=float,
    help="Choose thresholds on --valid so each level reaches this precision (e.g. 0.95).",
)
@click.option("--multi-label", is_flag=True, help="Texts may have several paths ('A > B | C > D').")
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
    """Train a hierarchical classifier (calibrated on --valid when given) and save it to --out."""
    from shelver.config import load_config
    from shelver.data import read_labeled
    from shelver.taxonomy import Taxonomy
    from shelver.training import train_model

    overrides += _decision_overrides(target_precision, multi_label)
    config = load_config(config_path, overrides)
    taxonomy = Taxonomy.load(taxonomy_path)
    data = read_labeled(train_path, taxonomy)
    valid = read_labeled(valid_path, taxonomy) if valid_path else None
    out.mkdir(parents=True, exist_ok=True)
    config.write(out / "train_config.json")  # written before anything runs
    model = train_model(config, taxonomy, data, progress=not quiet, valid=valid, workdir=out)
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
    from shelver.report import confidence_table, evaluate, summary_table, write_report

    evaluation = evaluate(model, data)
    write_report(evaluation, out, title=f"{data.origin}: {model.head} head")
    tables = f"{summary_table(evaluation.metrics)}\n\n{confidence_table(evaluation.metrics)}"
    click.echo(f"{data.origin}:\n{tables}\nreport: {out}/report.html")


# ---- issue 4: calibration, thresholds, decisions ---------------------------------------------
def _decision_overrides(target_precision: float | None, multi_label: bool) -> tuple[str, ...]:
    extra = () if target_precision is None else (f"decision.target_precision={target_precision}",)
    return extra + (("decision.multi_label=true",) if multi_label else ())


@main.command()
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Model directory.")
@click.option("--valid", "valid_path", required=True, type=existing_file, help="Labeled validation data.")
@click.option(
    "--target-precision", type=float, help="Choose thresholds so each level reaches this precision."
)
@click.option("--thresholds", help="Set the thresholds by hand instead: LEVEL1,LEVEL2 (e.g. 0.5,0.7).")
def calibrate(
    model_dir: Path, valid_path: Path, target_precision: float | None, thresholds: str | None
) -> None:
    """Re-fit temperatures and thresholds of a trained model on --valid, without retraining."""
    from shelver.data import read_labeled

    model = _load(model_dir, None)
    if target_precision is not None or thresholds is not None:
        model.set_params(target_precision=target_precision, thresholds=_parse_thresholds(thresholds))
    valid = read_labeled(valid_path, model.taxonomy_)
    model.calibrate(valid.texts, valid.y)
    model.save(model_dir)
    t = model.thresholds_
    click.echo(
        f"calibrated {model_dir} on {valid.origin}: thresholds {t.level1:.4f} / {t.level2:.4f}", err=True
    )
    _evaluate_and_print(model, valid, model_dir / "valid")


def _parse_thresholds(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        level1, level2 = (float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected LEVEL1,LEVEL2 such as 0.5,0.7, got {text!r}") from None
    return level1, level2


# ---- issue 3: representation learning ---------------------------------------------------------
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


# ---- issue 5: label raw search logs (LLM, validated against the taxonomy) ----------------------
@main.command()
@taxonomy_option
@click.option(
    "--log",
    "log_path",
    required=True,
    type=existing_file,
    help="Search log: CSV/Parquet/JSONL with a 'text' column (optional 'count'), or text lines.",
)
@click.option(
    "--out",
    "store_path",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Label store (SQLite) to create, or to resume: finished queries are skipped.",
)
@labeling_backend_options
@click.option("--concurrency", default=4, show_default=True, help="Calls in flight at once.")
@click.option(
    "--max-retries", default=5, show_default=True, help="Retries of a call on 429/5xx/timeouts (backoff)."
)
@click.option(
    "--votes", default=1, show_default=True, help="Samples per LLM backend (agreement -> confidence)."
)
@click.option("--shortlist", default=10, show_default=True, help="Candidate paths shown to the LLM.")
@click.option(
    "--encoder", default="minilm", show_default=True, help="Encoder for shortlists and the embedding backend."
)
@click.option("--prompt", default="label_v1", show_default=True, help="Prompt name or .txt file.")
@click.option("--limit", type=int, help="Label only the N most frequent queries.")
@click.option("--synonyms", "synonyms_path", type=existing_file, help="JSON/YAML {variant: canonical name}.")
@click.option("--price-prompt", type=float, help="US$ per million prompt tokens (cost estimate).")
@click.option("--price-completion", type=float, help="US$ per million completion tokens (cost estimate).")
@click.option("--text-column", default="text", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def label(
    taxonomy_path: Path,
    log_path: Path,
    store_path: Path,
    backends: tuple[str, ...],
    model: str | None,
    base_url: str | None,
    options: tuple[str, ...],
    concurrency: int,
    max_retries: int,
    votes: int,
    shortlist: int,
    encoder: str,
    prompt: str,
    limit: int | None,
    synonyms_path: Path | None,
    price_prompt: float | None,
    price_completion: float | None,
    text_column: str,
    quiet: bool,
) -> None:
    """Label a raw search log into a resumable store; every label is a path of the taxonomy or none."""
    from shelver.labeling import LabelConfig, Labeler, LabelStore, read_query_log
    from shelver.labeling.config import voters_from_cli
    from shelver.taxonomy import Taxonomy

    config = LabelConfig(
        voters=voters_from_cli(backends, model, base_url, options),
        encoder=encoder,
        shortlist=shortlist,
        samples=votes,
        prompt=prompt,
        concurrency=concurrency,
        max_retries=max_retries,
        limit=limit,
        price_prompt=price_prompt,
        price_completion=price_completion,
        synonyms=_read_synonyms(synonyms_path),
    )
    taxonomy = Taxonomy.load(taxonomy_path)
    queries = read_query_log(log_path, text_column)
    labeler = Labeler(taxonomy, config)
    with LabelStore(store_path) as store:
        try:
            summary = labeler.run(store, queries, progress=not quiet)
        finally:
            labeler.close()
        click.echo(_label_summary(summary, store), err=True)


def _read_synonyms(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    import yaml

    from shelver.errors import ConfigError

    doc = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: synonyms must be a mapping of variant -> canonical name")
    return {str(k): str(v) for k, v in doc.items()}


def _label_summary(summary, store) -> str:
    stats = summary.to_dict()
    cost = f", est. cost ${stats['cost']:.4f}" if stats["cost"] is not None else ""
    lines = [
        f"labeled {stats['queries']:,} queries with {stats['calls']:,} calls in {stats['seconds']:.1f}s "
        f"({stats['calls_per_second']:.2f} calls/s); tokens {stats['prompt_tokens']:,} in / "
        f"{stats['completion_tokens']:,} out{cost}",
        f"calls by status: {json.dumps(stats['by_status'])}; repairs: {json.dumps(stats['repairs'])}",
    ]
    if stats["reasons"]:
        lines.append(f"rejections and errors: {json.dumps(stats['reasons'])}")
    lines.append(
        f"store {store.path}: {store.count('labels'):,} labels for {store.count('queries'):,} queries"
    )
    return "\n".join(lines)


@main.group(cls=ShelverGroup)
def labels() -> None:
    """Export, audit and re-import the labels of a label store."""


@labels.command("export")
@click.option(
    "--store", "store_path", required=True, type=existing_file, help="Label store written by 'shelver label'."
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Training file (.csv, .parquet or .jsonl).",
)
@click.option("--min-confidence", default=0.0, show_default=True, help="Drop machine labels below this.")
@click.option(
    "--min-agreement", default=0.0, show_default=True, help="Drop machine labels whose votes agree less."
)
@click.option(
    "--taxonomy",
    "taxonomy_path",
    type=existing_file,
    help="Export against this taxonomy instead: labels whose path it lacks are dropped and counted.",
)
def labels_export(
    store_path: Path, out: Path, min_confidence: float, min_agreement: float, taxonomy_path: Path | None
) -> None:
    """Write a training file with a 'source' column; every path is checked against the taxonomy."""
    from shelver.labeling import LabelStore, export_frame, write_training_file
    from shelver.taxonomy import Taxonomy

    taxonomy = Taxonomy.load(taxonomy_path) if taxonomy_path else None
    with LabelStore(store_path, create=False) as store:
        frame, skipped = export_frame(store, min_confidence, min_agreement, taxonomy)
    written = write_training_file(frame, out)
    sources = frame["source"].value_counts().to_dict()
    click.echo(
        f"wrote {len(frame):,} rows to {written} (by source: {json.dumps(sources)}; "
        f"left out: {json.dumps(skipped)})",
        err=True,
    )


@labels.command("audit")
@click.option("--store", "store_path", required=True, type=existing_file, help="Label store.")
@click.option(
    "--model", "model_dir", required=True, type=click.Path(path_type=Path), help="Trained model directory."
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Review CSV to write."
)
@click.option("--limit", type=int, help="Only the N labels the model disagrees with most.")
def labels_audit(store_path: Path, model_dir: Path, out: Path, limit: int | None) -> None:
    """List the labels a trained model disagrees with most, as a CSV a reviewer edits (human_path)."""
    from shelver.labeling import LabelStore
    from shelver.labeling.review import audit_frame
    from shelver.model_dir import load_model

    model = load_model(model_dir)
    with LabelStore(store_path, create=False) as store:
        review = audit_frame(store, model, limit)
    out.parent.mkdir(parents=True, exist_ok=True)
    review.to_csv(out, index=False)
    click.echo(
        f"wrote {len(review):,} labels to review to {out}, most doubtful first; fill in 'human_path' "
        f"('=' accepts the label, 'none' for no category) and run 'shelver labels import'",
        err=True,
    )


@labels.command("import")
@click.option("--store", "store_path", required=True, type=existing_file, help="Label store.")
@click.option("--review", "review_path", required=True, type=existing_file, help="Reviewed CSV.")
@click.option("--reviewer", help="Name stored with the labels (default: review:<file name>).")
def labels_import(store_path: Path, review_path: Path, reviewer: str | None) -> None:
    """Store a reviewed CSV's rows as human labels, which outrank every machine label."""
    from shelver.labeling import LabelStore
    from shelver.labeling.review import import_reviews

    with LabelStore(store_path, create=False) as store:
        count = import_reviews(store, review_path, reviewer)
    click.echo(f"imported {count:,} human labels into {store_path}", err=True)


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
    help="Parquet file to write (with --engine ray, a new or empty folder of parts in input order).",
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


# ---- issue 8: cold start (bootstrap) ------------------------------------------------------------
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
) -> None:
    """Label a raw log, train, calibrate, evaluate, export and list queries to review; resumable.

    \b
    [select], the labels that train (keys, defaults):
      min_confidence = 0.5    machine labels below it are left out (after smoothing: use 0.2)
      valid_fraction = 0.2    share held out for calibration, by a hash of the text
      smooth = false          re-label the embedding labeler's rows from the log's own embeddings:
                              leaves refined by the rows they win, then a mean over neighbours
                              (source embedding+smooth; human and LLM labels never change)
      smooth_beta = 3.0       weight of the rows a leaf wins against its description
      smooth_k = 30           nearest log rows averaged per row
    \b
    [synthesize], between select and train (keys, defaults):
      enabled = true          off: train on the selected labels only
      min_examples = 50       leaves with fewer selected training rows get synthetic queries
      per_class = 20          queries kept per leaf and generator, at most
      generators = ["attributes", "titles"]   add "llm" to write with the label backend
      judge_top_k = 3         label.encoder must rank the leaf in its top K (0: no judge)
      seed = 0
    Rows that duplicate training text or copy the held-out split or --labeled-sample are
    dropped; kept rows (source synthetic:*) train but never count toward the tail bands.
    """
    from shelver.pipeline import RunContext, load_bootstrap_config, run_pipeline

    config = load_bootstrap_config(
        config_path, overrides + _label_overrides(backends, model, base_url, options)
    )
    ctx = RunContext(taxonomy_path, log_path, out, config, sample_path, progress=not quiet)
    run_pipeline(ctx, start_from, echo=lambda line: click.echo(line, err=True))
    click.echo((out / "evaluate" / "report.md").read_text())
    click.echo(f"model: {out}/export/model; queries to review: {out}/review/review.csv", err=True)


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


# ---- issue 6: synthetic queries for low-traffic subcategories -----------------------------------
@main.command()
@taxonomy_option
@train_option
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Synthetic file (.csv/.parquet/.jsonl).",
)
@click.option(
    "--min-examples", default=50, show_default=True, help="Synthesize for leaves with fewer training rows."
)
@click.option(
    "--per-class", default=20, show_default=True, help="Queries kept per leaf and generator (at most)."
)
@click.option(
    "--generator",
    "generators",
    multiple=True,
    type=click.Choice(["attributes", "titles", "llm"]),
    help="Repeat to combine (default: attributes and titles).",
)
@click.option(
    "--backend", type=click.Choice(["openai", "llamacpp", "fake"]), help="LLM backend of --generator llm."
)
@click.option(
    "--model", help="LLM: a name for openai, a GGUF path or 'smollm2'/'qwen2.5-coder-1.5b' for llamacpp."
)
@click.option("--base-url", help="openai backend: the endpoint, e.g. http://127.0.0.1:8080/v1.")
@click.option(
    "--option", "options", multiple=True, metavar="KEY=VALUE", help="Backend option, e.g. n_threads=1."
)
@click.option(
    "--avoid", "avoid_paths", multiple=True, type=existing_file, help="Valid/test files not to leak into."
)
@click.option(
    "--judge",
    help="Keep rows a judge assigns to their leaf: a trained model directory, or 'embedding'.",
)
@click.option("--judge-top-k", default=1, show_default=True, help="The leaf must be in the judge's top K.")
@click.option(
    "--encoder", default="minilm", show_default=True, help="Encoder for near-duplicate/leak filters."
)
@click.option(
    "--shopify",
    "shopify_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="shopify-taxonomy folder: add its color/pattern/material values to the attributes.",
)
@click.option("--seed", default=0, show_default=True, help="Seed of the generators.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synthesize(
    taxonomy_path: Path,
    train_path: Path,
    out: Path,
    min_examples: int,
    per_class: int,
    generators: tuple[str, ...],
    backend: str | None,
    model: str | None,
    base_url: str | None,
    options: tuple[str, ...],
    avoid_paths: tuple[Path, ...],
    judge: str | None,
    judge_top_k: int,
    encoder: str,
    shopify_dir: Path | None,
    seed: int,
    quiet: bool,
) -> None:
    """Generate filtered synthetic queries for the leaves with fewer than --min-examples rows."""
    from shelver import synthesis as s
    from shelver.taxonomy import Taxonomy

    taxonomy = Taxonomy.load(taxonomy_path)
    frame, y = s.read_training(train_path, taxonomy)
    llm = _synthesis_backend(backend, model, base_url, options) if "llm" in generators else None
    try:
        result = s.synthesize(
            taxonomy,
            frame,
            y,
            s.make_generators(generators or ("attributes", "titles"), seed, llm),
            encoder=encoder,
            min_examples=min_examples,
            per_class=per_class,
            avoid=s.read_avoid(avoid_paths),
            judge=_synthesis_judge(judge, taxonomy, encoder),
            filters=s.FilterConfig(judge_top_k=judge_top_k),
            extra_attributes=s.shopify_attributes(shopify_dir) if shopify_dir else None,
            progress=not quiet,
        )
    finally:
        if llm is not None:
            llm.close()
    s.write_rows(result.rows, taxonomy, out)
    click.echo(_synthesis_summary(result, out), err=True)


def _synthesis_backend(
    backend: str | None, model: str | None, base_url: str | None, options: tuple[str, ...]
):
    from shelver.errors import ConfigError
    from shelver.labeling import make_backend
    from shelver.labeling.config import voters_from_cli

    if backend is None:
        raise ConfigError("--generator llm needs --backend openai or --backend llamacpp")
    spec = voters_from_cli([backend], model, base_url, options)[0]
    return make_backend(spec.backend, spec.model, spec.options)


def _synthesis_judge(judge: str | None, taxonomy, encoder: str):
    from shelver import synthesis as s

    if judge is None:
        return None
    if judge == "embedding":
        return s.EmbeddingJudge(taxonomy, encoder)
    return s.ClassifierJudge.load(judge, taxonomy)


def _synthesis_summary(result, out: Path) -> str:
    removed = ", ".join(f"{k} {v:,}" for k, v in result.counts.removed.items() if v) or "none"
    sources = ", ".join(f"{k} {v:,}" for k, v in sorted(result.by_source.items())) or "none"
    return (
        f"{len(result.paths):,} leaves below the threshold; generated {result.counts.generated:,}, "
        f"removed {removed}; wrote {len(result.rows):,} rows ({sources}) -> {out}"
    )


if __name__ == "__main__":
    main()
