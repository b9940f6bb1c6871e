"""``shelver classify-batch``: classify a table of queries offline, locally or on Ray.

Input: a Parquet or CSV file, or a folder of partitions (read in name order). Output: Parquet
with every input column and the decision columns (``shelver_<level>``,
``shelver_confidence_<level>`` as float64, then any other field of ``Prediction.to_dict()``:
the decision and its reason as strings, ``shelver_paths`` as ``list<list<string>>``,
``shelver_candidate`` as ``list<string>``), rows in input order; a query engine reads the lists
without parsing JSON. An output ending in ``.csv`` (local engine) is CSV, its list cells JSON
text. The model runs its ONNX export (torch-free).

The input is cut into shards of ``shard_rows`` consecutive rows, and every shard into batches
of ``batch_rows``; a batch never straddles two shards, so both engines feed the model the same
batches and give the same answers. Logs repeat their queries: within a shard, each distinct text
is classified once and its decision reused (``BatchClassifier.decisions``).

- ``engine="local"``: one process streams the batches through the model into one Parquet file.
- ``engine="ray"``: Ray Data ``map_batches`` hands shard numbers to a pool of actors, each
  loading the model once; an actor reads its shard's rows itself and writes
  ``part-<shard:05d>.parquet``, so the parts sort in input order whatever order they finish in.
  Without an address Ray starts locally; with one (``ray://...`` or ``auto``) the same code runs
  on a cluster whose nodes see the input and output paths.

Every output file is written under a hidden temporary name and renamed when complete, so a
killed job leaves no half-written part (readers skip names starting with ``.``); the reading and
writing live in ``batch_io.py``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelver.answer_memo import AnswerMemo
from shelver.batch_io import (
    DEFAULT_BATCH_ROWS,
    Source,
    open_source,
    read_rows,
    rebatch,
    write_csv,
    write_parquet,
)
from shelver.errors import ConfigError, DataError

ENGINES = ("local", "ray")
PREFIX = "shelver_"
# a shard is one actor task and one output part: minutes of work, not seconds, on one core
DEFAULT_SHARD_ROWS = 50_000
# distinct texts whose decisions a worker keeps for reuse within a shard (~1 KB each)
DEFAULT_MEMO_ROWS = 100_000
# part-<shard:05d> names sort in input order only while they have five digits
MAX_SHARDS = 100_000


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
    shard_rows: int = DEFAULT_SHARD_ROWS,
    progress: bool = True,
    ray_address: str | None = None,
    actors: int | None = None,
) -> BatchResult:
    """Classify every row of ``input_path`` and write ``output_path``; see the module docstring."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    _check_sizes(batch_rows, shard_rows)
    if engine == "ray" and Path(output_path).suffix.lower() == ".csv":
        raise ConfigError("--engine ray writes a folder of Parquet parts; for a CSV file use --engine local")
    source = open_source(Path(input_path), text_column)
    plan = Plan(str(Path(model_dir).resolve()), text_column, batch_rows, shard_rows)
    started = time.perf_counter()
    if engine == "local":
        rows = _run_local(plan, source, Path(output_path), progress)
    else:
        rows = _run_ray(plan, source, Path(output_path), progress, ray_address, actors)
    return BatchResult(rows, time.perf_counter() - started, Path(output_path), engine)


@dataclass(frozen=True)
class Plan:
    """What every worker needs to classify a shard, beside the input."""

    model_dir: str
    text_column: str
    batch_rows: int
    shard_rows: int


def _check_sizes(batch_rows: int, shard_rows: int) -> None:
    for name, value in (("--batch-rows", batch_rows), ("--shard-rows", shard_rows)):
        if value < 1:
            raise ConfigError(f"{name} must be a positive number of rows, got {value}")


def batch_sizes(rows: int, shard_rows: int, batch_rows: int) -> Iterator[int]:
    """The batches of ``rows`` rows: cut into shards first, then each shard into batches.

    A batch never straddles two shards, so a shard's batches are the same whichever engine
    runs it (an int8 encoder scales its activations per batch: same batches, same answers).
    """
    for start in range(0, rows, shard_rows):
        shard = min(shard_rows, rows - start)
        for offset in range(0, shard, batch_rows):
            yield min(batch_rows, shard - offset)


# ---- the work of one batch, shared by both engines ----------------------------------------
class BatchClassifier:
    """Loads the model once; called on Arrow tables, returns them with the decision columns.

    Search logs repeat themselves: each distinct text of a shard is classified once, the
    first time it is met, and its decision reused for every later row of that shard (the
    memo is cleared when a shard starts, so a shard's answers never depend on other shards,
    whichever engine or actor ran them).
    """

    def __init__(
        self,
        model_dir: str,
        text_column: str,
        schema: Any = None,
        threads: int | None = None,
        memo_rows: int = DEFAULT_MEMO_ROWS,
    ) -> None:
        from shelver.model_dir import load_model

        self.model = load_model(model_dir, encoder="serving", threads=threads)
        self.levels = list(self.model.taxonomy_.levels)
        self.text_column = text_column
        self.schema = schema
        self.memo = AnswerMemo(memo_rows)

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        texts = _texts(table, self.text_column)
        columns = decision_columns(self.decisions(texts), self.levels)
        if self.schema is None:  # the first batch fixes the types every later batch is cast to
            self.schema = pa.schema([(name, _arrow_type(values, name)) for name, values in columns.items()])
        for field in self.schema:
            values = columns.get(field.name, [None] * len(texts))
            table = _drop(table, field.name).append_column(field, pa.array(values, type=field.type))
        return table

    def decisions(self, texts: list[str]) -> list[dict[str, Any]]:
        """``Prediction.to_dict()`` per text; texts met before in this shard are not re-run."""
        known = self.memo.get_many(texts)
        new = [t for t in dict.fromkeys(texts) if t not in known]
        fresh = self.model.classify(new) if new else []
        known.update(zip(new, (p.to_dict() for p in fresh), strict=True))
        self.memo.put(known)
        return [known[t] for t in texts]

    def shard(self, tables: Iterable[Any]) -> Iterator[Any]:
        """The tables of one shard, classified with a memo that starts empty."""
        self.memo.clear()
        return map(self, tables)


def decision_columns(predictions: list[dict[str, Any]], levels: list[str]) -> dict[str, list[Any]]:
    """``Prediction.to_dict()`` rows as columns: one per level for the path and the confidence,
    then every other field as it is (lists stay lists: Arrow list columns, not JSON text)."""
    columns: dict[str, list[Any]] = {}
    for i, level in enumerate(levels):
        columns[f"{PREFIX}{level}"] = [_at(p.get("path"), i) or None for p in predictions]
    for i, level in enumerate(levels):
        columns[f"{PREFIX}confidence_{level}"] = [_at(p.get("confidence"), i) for p in predictions]
    others = dict.fromkeys(k for p in predictions for k in p if k not in ("text", "path", "confidence"))
    for key in others:
        columns[PREFIX + key] = [_plain(p.get(key)) for p in predictions]
    return columns


def _at(values: Any, i: int) -> Any:
    return values[i] if isinstance(values, list | tuple) and i < len(values) else None


def _plain(value: Any) -> Any:
    """Scalars and (nested) lists as they are; anything else (an object) as JSON text."""
    if value is None or isinstance(value, str | int | float | bool | list | tuple):
        return value
    return json.dumps(value)


# list columns whose first batch may hold only empty lists, which say nothing of their depth
LIST_DEPTHS = {f"{PREFIX}paths": 2, f"{PREFIX}candidate": 1}  # lists of strings


def _arrow_type(values: list[Any], name: str = "") -> Any:
    """The column's Arrow type, from its first non-empty value: bool, float64, string, or a
    list of these (``shelver_paths``: ``list<list<string>>``, ``shelver_candidate``: ``list<string>``)."""
    import pyarrow as pa

    if any(isinstance(v, list | tuple) for v in values):
        items = [x for v in values if isinstance(v, list | tuple) for x in v]
        if not items and name in LIST_DEPTHS:
            return _string_lists(LIST_DEPTHS[name])
        return pa.list_(_arrow_type(items))
    first = next((v for v in values if v is not None), "")
    if isinstance(first, bool):
        return pa.bool_()
    return pa.float64() if isinstance(first, int | float) else pa.string()


def _string_lists(depth: int) -> Any:
    import pyarrow as pa

    return pa.list_(_string_lists(depth - 1)) if depth else pa.string()


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


def shard_tables(plan: Plan, source: Source, shard: int) -> Iterator[Any]:
    """Shard ``shard``'s rows, in the batches the model is fed."""
    start = shard * plan.shard_rows
    stop = min(start + plan.shard_rows, source.total)
    sizes = batch_sizes(stop - start, plan.shard_rows, plan.batch_rows)
    return rebatch(read_rows(source, start, stop, plan.batch_rows), sizes)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    # rows/s with SI units ("12.3krow/s"), smoothed over the recent batches
    return tqdm(
        total=total, desc="classifying", unit="row", unit_scale=True, smoothing=0.1, disable=not enabled
    )


# ---- local engine -----------------------------------------------------------------------
def _run_local(plan: Plan, source: Source, output: Path, progress: bool) -> int:
    classify = BatchClassifier(plan.model_dir, plan.text_column)
    shards = range(math.ceil(source.total / plan.shard_rows))
    tables = (t for shard in shards for t in classify.shard(shard_tables(plan, source, shard)))
    output.parent.mkdir(parents=True, exist_ok=True)
    write = write_csv if output.suffix.lower() == ".csv" else write_parquet
    with _progress(source.total, progress) as bar:
        return write(_counted(tables, bar), output)


def _counted(tables: Iterable[Any], bar: Any) -> Iterator[Any]:
    for table in tables:
        bar.update(table.num_rows)
        yield table


# ---- Ray engine -------------------------------------------------------------------------
class ShardWriter:
    """A Ray actor: loads the model once, then classifies whole shards, each into its part."""

    def __init__(self, plan: Plan, source: Source, output: str, schema: Any) -> None:
        self.plan, self.source, self.output = plan, source, Path(output)
        # one thread per actor: the pool already runs one actor per core
        self.classify = BatchClassifier(plan.model_dir, plan.text_column, schema, threads=1)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[int]]:
        shards = [int(shard) for shard in batch["shard"]]
        return {"shard": shards, "rows": [self.write(shard) for shard in shards]}

    def write(self, shard: int) -> int:
        tables = self.classify.shard(shard_tables(self.plan, self.source, shard))
        return write_parquet(tables, self.output / part_name(shard))


def part_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


def _run_ray(
    plan: Plan, source: Source, output: Path, progress: bool, address: str | None, actors: int | None
) -> int:
    shards = math.ceil(source.total / plan.shard_rows)
    if shards > MAX_SHARDS:
        least = math.ceil(source.total / (MAX_SHARDS - 1))
        raise ConfigError(
            f"{source.total:,} rows in shards of {plan.shard_rows:,} make {shards:,} parts, over "
            f"{MAX_SHARDS - 1:,}; raise --shard-rows to at least {least:,}"
        )
    _prepare_output(output)
    ray, started_here = _start_ray(address)
    try:
        written = _ray_pipeline(ray, plan, source, output, shards, progress, actors)
    finally:
        if started_here:
            ray.shutdown()
    return _check_parts(written, shards, source.total, output)


def _prepare_output(output: Path) -> None:
    """Parts of an earlier run would mix with this one's: the folder must be new or empty."""
    if output.is_file():
        raise DataError(f"{output} is a file; --engine ray writes a folder of parts: pass a folder path")
    if output.is_dir() and any(output.iterdir()):
        raise DataError(
            f"{output} is not empty ({sum(1 for _ in output.iterdir())} entries); --engine ray writes "
            "its parts into a new or empty folder: remove it or pass another --output"
        )
    output.mkdir(parents=True, exist_ok=True)


def _ray_pipeline(
    ray: Any, plan: Plan, source: Source, output: Path, shards: int, progress: bool, actors: int | None
) -> dict[int, int]:
    pool = min(actors or max(int(ray.cluster_resources().get("CPU", 1)), 1), shards)
    ray.data.DataContext.get_current().enable_progress_bars = False  # ours counts rows, not blocks
    numbers = ray.data.from_items([{"shard": i} for i in range(shards)], override_num_blocks=shards)
    done = numbers.map_batches(
        ShardWriter,
        fn_constructor_kwargs={
            "plan": plan,
            "source": source,
            "output": str(output.resolve()),
            "schema": _probe_schema(plan, source),
        },
        batch_size=1,
        # one shard in flight per actor: a free actor takes the next shard, none queues behind a busy one
        compute=ray.data.ActorPoolStrategy(size=pool, max_tasks_in_flight_per_actor=1),
        num_cpus=1,
    )
    written: dict[int, int] = {}
    with _progress(source.total, progress) as bar:
        for row in done.iter_rows():
            written[int(row["shard"])] = int(row["rows"])
            bar.update(int(row["rows"]))
    return written


def _check_parts(written: dict[int, int], shards: int, total: int, output: Path) -> int:
    """Every shard wrote its part and together they hold every input row."""
    missing = sorted(set(range(shards)) - set(written))
    if missing or sum(written.values()) != total:
        raise DataError(
            f"{output} holds {len(written)} of {shards} parts with {sum(written.values()):,} of {total:,} "
            f"rows (missing: {missing[:5]}); was the input changed while read? rerun into an empty folder"
        )
    return total


def _start_ray(address: str | None) -> tuple[Any, bool]:
    try:
        import ray
    except ImportError:
        raise ConfigError("--engine ray needs Ray Data: pip install 'shelver[batch]'") from None
    if ray.is_initialized():
        return ray, False
    if address is None:
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(address=address, log_to_driver=False)
    return ray, True


def _probe_schema(plan: Plan, source: Source) -> Any:
    """The decision columns' types, from the first rows, so every part has the same schema."""
    probe = BatchClassifier(plan.model_dir, plan.text_column)
    probe(next(read_rows(source, 0, min(source.total, 256), 256)))
    return probe.schema
