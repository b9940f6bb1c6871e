"""Labeled data: label a raw search log, export/audit/import its labels, synthesize tail queries."""

from __future__ import annotations

import json
from pathlib import Path

import click

from shelver.cli.common import (
    ShelverGroup,
    existing_file,
    labeling_backend_options,
    main,
    stage_option,
    taxonomy_option,
    train_option,
)
from shelver.config import GENERATORS, LLM_BACKENDS, LabelStage, SynthesizeStage


# ---- label raw search logs (LLM, validated against the taxonomy) -------------------------------
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
@stage_option(LabelStage, "concurrency", type=int, help="Calls in flight at once.")
@stage_option(LabelStage, "max_retries", type=int, help="Retries of a call on 429/5xx/timeouts (backoff).")
@stage_option(LabelStage, "votes", type=int, help="Samples per LLM backend (agreement -> confidence).")
@stage_option(LabelStage, "shortlist", type=int, help="Candidate paths shown to the LLM.")
@stage_option(LabelStage, "encoder", help="Encoder for shortlists and the embedding backend.")
@stage_option(LabelStage, "prompt", help="Prompt name or .txt file.")
@stage_option(LabelStage, "limit", type=int, help="Label only the N most frequent queries.")
@click.option("--synonyms", "synonyms_path", type=existing_file, help="JSON/YAML {variant: canonical name}.")
@click.option("--price-prompt", type=float, help="US$ per million prompt tokens (cost estimate).")
@click.option("--price-completion", type=float, help="US$ per million completion tokens (cost estimate).")
@click.option("--text-column", default="text", show_default=True)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--verbose", is_flag=True, help="llama.cpp's own log on the terminal, not in llamacpp.log beside --out."
)
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
    verbose: bool,
) -> None:
    """Label a raw search log into a resumable store; every label is a path of the taxonomy or none."""
    from shelver.labeling import Labeler, LabelStore, read_query_log
    from shelver.labeling.backends.llamacpp import llama_log
    from shelver.labeling.config import label_config
    from shelver.taxonomy import Taxonomy

    stage = LabelStage(
        backends=backends or LabelStage.backends,
        model=model,
        base_url=base_url,
        options=options,
        encoder=encoder,
        shortlist=shortlist,
        votes=votes,
        concurrency=concurrency,
        max_retries=max_retries,
        prompt=prompt,
        limit=limit,
    )
    config = label_config(
        stage,
        price_prompt=price_prompt,
        price_completion=price_completion,
        synonyms=_read_synonyms(synonyms_path),
    )
    taxonomy = Taxonomy.load(taxonomy_path)
    queries = read_query_log(log_path, text_column)
    labeler = Labeler(taxonomy, config)
    with LabelStore(store_path) as store:
        with llama_log(store_path.parent, (v.backend for v in config.voters), verbose) as log_path:
            try:
                summary = labeler.run(store, queries, progress=not quiet)
            finally:
                labeler.close()
        click.echo(_label_summary(summary, store), err=True)
        if log_path is not None:
            click.echo(f"llama.cpp's log: {log_path}", err=True)


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
    """Export, audit and re-import the labels of a label store; find conflicting labels in files."""


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
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["training", "label-studio"]),
    default="training",
    show_default=True,
    help="label-studio: --out is a JSON task file, every stored query pre-annotated with its label, "
    "and OUT.label_config.xml the labeling interface (filters do not apply).",
)
@click.option(
    "--model",
    "model_dir",
    type=click.Path(path_type=Path),
    help="label-studio: pre-annotate with this trained model's answer too.",
)
def labels_export(
    store_path: Path,
    out: Path,
    min_confidence: float,
    min_agreement: float,
    taxonomy_path: Path | None,
    out_format: str,
    model_dir: Path | None,
) -> None:
    """Write a training file with a 'source' column; every path is checked against the taxonomy.
    Or, with --format label-studio, tasks to review in Label Studio."""
    from shelver.labeling import LabelStore, export_frame, write_training_file
    from shelver.taxonomy import Taxonomy

    if out_format == "label-studio":
        _export_label_studio(store_path, out, model_dir)
        return
    if model_dir is not None:
        raise click.UsageError("--model pre-annotates Label Studio tasks: add --format label-studio")
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


def _export_label_studio(store_path: Path, out: Path, model_dir: Path | None) -> None:
    from shelver.labeling import LabelStore
    from shelver.labeling.label_studio import write_tasks
    from shelver.model_dir import load_model

    with LabelStore(store_path, create=False) as store:
        model = load_model(model_dir, taxonomy=store.taxonomy()) if model_dir else None
        version = f"shelver:{model_dir.name}" if model_dir else "shelver"
        tasks, config, count = write_tasks(store, out, model, version)
    click.echo(
        f"wrote {count:,} Label Studio tasks to {tasks} and the labeling config to {config}; "
        "import the JSON export back with 'shelver labels import --review EXPORT.json'",
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


@labels.command("conflicts")
@taxonomy_option
@click.option(
    "--data",
    "data_paths",
    required=True,
    multiple=True,
    type=existing_file,
    help="Labeled file; repeat to check several together (train and test: the test rows a model "
    "will be surest of repeat training texts).",
)
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="CSV of the pairs to write."
)
@click.option(
    "--encoder", default="minilm", show_default=True, help="Encoder that finds near-identical texts."
)
@click.option(
    "--min-similarity",
    default=0.95,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Cosine at or above which two texts are twins.",
)
@click.option(
    "--sample",
    type=click.IntRange(min=2),
    help="Check this many rows drawn at random (seed 0): needed above 200,000 rows.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
def labels_conflicts(
    taxonomy_path: Path,
    data_paths: tuple[Path, ...],
    out: Path,
    encoder: str,
    min_similarity: float,
    sample: int | None,
    quiet: bool,
) -> None:
    """Find texts that (nearly) repeat each other with different labels: no model answers those at a
    high precision. Pairs each row with its most similar other row; the work grows with rows squared."""
    from shelver.consistency import find_twins, rows_to_check
    from shelver.data import read_labeled
    from shelver.encoders import make_encoder
    from shelver.taxonomy import Taxonomy

    taxonomy = Taxonomy.load(taxonomy_path)
    parts = [read_labeled(path, taxonomy) for path in data_paths]
    everyone = [
        (t, tuple(row), f"{part.origin}:{n}")
        for part in parts
        for t, row, n in zip(part.texts, part.y, part.row_numbers, strict=True)
    ]
    texts, paths, where = map(
        list, zip(*[everyone[i] for i in rows_to_check(len(everyone), sample)], strict=True)
    )
    if len(texts) < len(everyone):
        click.echo(f"checking a random sample of {len(texts):,} of {len(everyone):,} rows", err=True)
    vectors = make_encoder(encoder).encode(texts, progress=not quiet)
    twins = find_twins(texts, paths, vectors, where, min_similarity)
    out.parent.mkdir(parents=True, exist_ok=True)
    twins.conflicts.to_csv(out, index=False)
    click.echo(_conflicts_summary(twins, min_similarity, out), err=True)


def _conflicts_summary(twins, min_similarity: float, out: Path) -> str:
    lines = [
        f"{twins.rows:,} rows: {twins.with_twin:,} have a twin (cosine >= {min_similarity:g}); "
        f"{twins.agreement:.1%} of those carry their twin's label"
        if twins.with_twin
        else f"{twins.rows:,} rows: none has a twin (cosine >= {min_similarity:g})"
    ]
    lines += [f"  {n:>5,}  {a}  vs  {b}" for a, b, n in twins.label_pairs()]
    lines.append(
        f"wrote {len(twins.conflicts):,} disagreeing pairs to {out}, most similar first: fix the wrong "
        "labels, or give a text that belongs to both its two paths ('A > B | C > D')"
    )
    return "\n".join(lines)


@labels.command("import")
@click.option("--store", "store_path", required=True, type=existing_file, help="Label store.")
@click.option(
    "--review",
    "review_path",
    required=True,
    type=existing_file,
    help="Reviewed CSV, or a Label Studio JSON export (.json).",
)
@click.option("--reviewer", help="Name stored with the labels (default: review:<file name>).")
def labels_import(store_path: Path, review_path: Path, reviewer: str | None) -> None:
    """Store a reviewed CSV's rows (or a Label Studio export's annotations) as human labels, which
    outrank every machine label."""
    from shelver.labeling import LabelStore
    from shelver.labeling.review import import_reviews

    with LabelStore(store_path, create=False) as store:
        count = import_reviews(store, review_path, reviewer)
    click.echo(f"imported {count:,} human labels into {store_path}", err=True)


# ---- synthetic queries for low-traffic subcategories --------------------------------------------
@main.command()
@taxonomy_option
@train_option
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Synthetic file (.csv/.parquet/.jsonl).",
)
@stage_option(
    SynthesizeStage, "min_examples", type=int, help="Synthesize for leaves with fewer training rows."
)
@stage_option(SynthesizeStage, "per_class", type=int, help="Queries kept per leaf and generator (at most).")
@stage_option(
    SynthesizeStage,
    "generators",
    "--generator",
    "generators",
    multiple=True,
    type=click.Choice(GENERATORS),
    help="Repeat to combine.",
)
@click.option("--backend", type=click.Choice(LLM_BACKENDS), help="LLM backend of --generator llm.")
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
@stage_option(SynthesizeStage, "judge_top_k", type=int, help="The leaf must be in the judge's top K.")
@stage_option(LabelStage, "encoder", help="Encoder for near-duplicate/leak filters and the embedding judge.")
@click.option(
    "--shopify",
    "shopify_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="shopify-taxonomy folder: add its color/pattern/material values to the attributes.",
)
@stage_option(SynthesizeStage, "seed", type=int, help="Seed of the generators.")
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
            s.make_generators(generators, seed, llm),
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
