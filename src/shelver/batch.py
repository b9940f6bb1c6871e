"""``shelver classify-batch``: classify a table of queries offline, locally or on Ray.

Input: a Parquet or CSV file, or a folder of partitions (read in name order). Output: Parquet
with every input column and the decision columns (``shelver_<level>``,
``shelver_confidence_<level>``, then any other field of ``Prediction.to_dict()``, such as the
decision and its reason), rows in input order. The model runs its ONNX export (torch-free).

- ``engine="local"``: one process streams batches through the model into one Parquet file.
- ``engine="ray"``: Ray Data ``map_batches`` over a pool of actors, each loading the model
  once; writes a folder of Parquet parts whose names sort in input order. Without an address
  Ray starts locally; with one (``ray://...`` or ``auto``) the same code runs on a cluster.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelver.errors import ConfigError, DataError

ENGINES = ("local", "ray")
SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
PREFIX = "shelver_"
# a batch of this many rows keeps the encoder busy and the memory per actor small
DEFAULT_BATCH_ROWS = 2048


@dataclass(frozen=True)
class BatchResult:
    rows: int
    seconds: float
    output: Path
    engine: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


def classify_batch(
    model_dir: str | Path,
    input_path: str | Path,
    output_path: str | Path,
    *,
    engine: str = "local",
    text_column: str = "text",
    batch_rows: int = DEFAULT_BATCH_ROWS,
    progress: bool = True,
    ray_address: str | None = None,
    actors: int | None = None,
) -> BatchResult:
    """Classify every row of ``input_path`` and write ``output_path``; see the module docstring."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    files, kind = input_files(Path(input_path))
    started = time.perf_counter()
    if engine == "local":
        rows = _run_local(Path(model_dir), files, kind, Path(output_path), text_column, batch_rows, progress)
    else:
        rows = _run_ray(
            Path(model_dir), files, kind, Path(output_path), text_column, batch_rows, ray_address, actors
        )
    return BatchResult(rows, time.perf_counter() - started, Path(output_path), engine)


def input_files(path: Path) -> tuple[list[Path], str]:
    """The files to read, in order, and their format; one format per input."""
    if not path.exists():
        raise DataError(f"input {str(path)!r} does not exist; pass a Parquet/CSV file or a folder of them")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in SUFFIXES) if path.is_dir() else [path]
    kinds = {SUFFIXES.get(p.suffix.lower()) for p in files}
    if not files or None in kinds:
        raise DataError(
            f"{path} holds no .parquet or .csv files; classify-batch reads Parquet or CSV "
            "(a file, or a folder of partitions)"
        )
    if len(kinds) > 1:
        raise DataError(f"{path} mixes Parquet and CSV partitions; convert them to one format")
    return files, kinds.pop()  # type: ignore[return-value]


# ---- the work of one batch, shared by both engines ----------------------------------------
class BatchClassifier:
    """Loads the model once; called on Arrow tables, returns them with the decision columns.

    A Ray actor is one instance of this class, so each actor loads the model once.
    """

    def __init__(
        self, model_dir: str, text_column: str, schema: Any = None, threads: int | None = None
    ) -> None:
        from shelver.model_dir import load_model

        self.model = load_model(model_dir, encoder="serving", threads=threads)
        self.levels = list(self.model.taxonomy_.levels)
        self.text_column = text_column
        self.schema = schema

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        texts = _texts(table, self.text_column)
        columns = decision_columns([p.to_dict() for p in self.model.classify(texts)], self.levels)
        if self.schema is None:  # the first batch fixes the types every later batch is cast to
            self.schema = pa.schema([(name, _arrow_type(values)) for name, values in columns.items()])
        for field in self.schema:
            values = columns.get(field.name, [None] * len(texts))
            table = _drop(table, field.name).append_column(field, pa.array(values, type=field.type))
        return table


def decision_columns(predictions: list[dict[str, Any]], levels: list[str]) -> dict[str, list[Any]]:
    """``Prediction.to_dict()`` rows as columns: one per level for the path and the confidence,
    then every other field (scalars as they are, lists and objects as JSON)."""
    columns: dict[str, list[Any]] = {}
    for i, level in enumerate(levels):
        columns[f"{PREFIX}{level}"] = [_at(p.get("path"), i) or None for p in predictions]
    for i, level in enumerate(levels):
        columns[f"{PREFIX}confidence_{level}"] = [_at(p.get("confidence"), i) for p in predictions]
    others = dict.fromkeys(k for p in predictions for k in p if k not in ("text", "path", "confidence"))
    for key in others:
        columns[PREFIX + key] = [_scalar(p.get(key)) for p in predictions]
    return columns


def _at(values: Any, i: int) -> Any:
    return values[i] if isinstance(values, list | tuple) and i < len(values) else None


def _scalar(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float | bool) else json.dumps(value)


def _arrow_type(values: list[Any]) -> Any:
    import pyarrow as pa

    first = next((v for v in values if v is not None), "")
    if isinstance(first, bool):
        return pa.bool_()
    return pa.float64() if isinstance(first, int | float) else pa.string()


def _texts(table: Any, column: str) -> list[str]:
    if column not in table.column_names:
        raise DataError(
            f"the input has no {column!r} column (columns: {', '.join(table.column_names)}); "
            f"pass --text-column NAME"
        )
    return ["" if t is None else str(t) for t in table.column(column).to_pylist()]


def _drop(table: Any, name: str) -> Any:
    """An input that was classified before gets fresh decision columns, not duplicates."""
    return table.drop_columns([name]) if name in table.column_names else table


# ---- local engine -----------------------------------------------------------------------
def _run_local(
    model_dir: Path, files: list[Path], kind: str, output: Path, column: str, batch_rows: int, progress: bool
) -> int:
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    classify = BatchClassifier(str(model_dir), column)
    output.parent.mkdir(parents=True, exist_ok=True)
    writer, rows = None, 0
    with tqdm(total=_count_rows(files, kind), desc="classifying", unit="row", disable=not progress) as bar:
        try:
            for batch in read_batches(files, kind, batch_rows):
                table = classify(batch)
                writer = writer or pq.ParquetWriter(str(output), table.schema)
                writer.write_table(table)
                rows += table.num_rows
                bar.update(table.num_rows)
        finally:
            if writer is not None:
                writer.close()
    if writer is None:
        raise DataError(f"{files[0]} has no rows to classify")
    return rows


def read_batches(files: list[Path], kind: str, batch_rows: int) -> Iterator[Any]:
    """Arrow tables of at most ``batch_rows`` rows, file after file, in order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for file in files:
        if kind == "parquet":
            for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_rows):
                yield pa.Table.from_batches([batch])
        else:
            yield from _csv_batches(file, batch_rows)


def _csv_batches(file: Path, batch_rows: int) -> Iterator[Any]:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = pacsv.open_csv(file).schema.names
    # every column read as text: ids keep their leading zeros, and "NA" stays a query
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=False)
    reader = pacsv.open_csv(file, convert_options=convert)
    pending: list[Any] = []
    for batch in reader:
        pending.append(batch)
        if sum(b.num_rows for b in pending) >= batch_rows:
            yield pa.Table.from_batches(pending)
            pending = []
    if pending:
        yield pa.Table.from_batches(pending)


def _count_rows(files: list[Path], kind: str) -> int | None:
    if kind != "parquet":
        return None
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


# ---- Ray engine -------------------------------------------------------------------------
def _run_ray(
    model_dir: Path,
    files: list[Path],
    kind: str,
    output: Path,
    column: str,
    batch_rows: int,
    address: str | None,
    actors: int | None,
) -> int:
    ray, started_here = _start_ray(address)
    try:
        return _ray_pipeline(ray, model_dir, files, kind, output, column, batch_rows, actors)
    finally:
        if started_here:
            ray.shutdown()


def _ray_pipeline(
    ray: Any,
    model_dir: Path,
    files: list[Path],
    kind: str,
    output: Path,
    column: str,
    batch_rows: int,
    actors: int | None,
) -> int:
    schema = _probe_schema(model_dir, files, kind, column)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True  # output rows in input order
    context.enable_progress_bars = True
    # one CPU stays free for the (light) read and write tasks, or they would wait on the actors forever
    pool = actors or max(int(ray.cluster_resources().get("CPU", 1)) - 1, 1)
    # a few blocks per actor, or one big file would feed a single actor
    dataset = _ray_read(ray, files, kind, blocks=max(len(files), 4 * pool))
    classified = dataset.map_batches(
        BatchClassifier,
        fn_constructor_kwargs={
            "model_dir": str(model_dir.resolve()),
            "text_column": column,
            "schema": schema,
            "threads": 1,
        },
        batch_size=batch_rows,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pool),
        num_cpus=1,
    )
    classified.write_parquet(str(output.resolve()), filename_provider=_ordered_names())
    return sum(pq_rows(p) for p in sorted(output.glob("*.parquet")))


def _start_ray(address: str | None) -> tuple[Any, bool]:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'shelver[batch]'") from None
    if ray.is_initialized():
        return ray, False
    if (
        address is None
    ):  # local mode: one extra logical CPU for reading and writing, so every core runs an actor
        ray.init(num_cpus=(os.cpu_count() or 1) + 1, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return ray, True


def _probe_schema(model_dir: Path, files: list[Path], kind: str, column: str) -> Any:
    """The decision columns' types, from the first rows, so every actor writes the same schema."""
    first = next(read_batches(files[:1], kind, 256), None)
    if first is None:
        raise DataError(f"{files[0]} has no rows to classify")
    probe = BatchClassifier(str(model_dir), column)
    probe(first)
    return probe.schema


def _ray_read(ray: Any, files: list[Path], kind: str, blocks: int) -> Any:
    paths = [str(f.resolve()) for f in files]
    if kind == "parquet":
        return ray.data.read_parquet(paths, override_num_blocks=blocks)
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = pacsv.open_csv(files[0]).schema.names
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=False)
    return ray.data.read_csv(paths, convert_options=convert, override_num_blocks=blocks)


def _ordered_names() -> Any:
    from ray.data.datasource import FilenameProvider

    class OrderedNames(FilenameProvider):
        """``part-<task>-<block>.parquet``: sorting the names gives the rows back in input order."""

        def get_filename_for_block(
            self, block: Any, write_uuid: str, task_index: int, block_index: int
        ) -> str:
            return f"part-{task_index:06d}-{block_index:06d}.parquet"

    return OrderedNames()


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows
