"""Arrow I/O of ``classify-batch``: the input's files and any row range of them, and writers
that leave a complete file or none.

Input: Parquet or CSV files (one format per input), every CSV column read as text. Output:
Parquet keeps list columns as Arrow lists; CSV writes them as JSON text (a CSV cell holds no
list). Every file is written under a hidden temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shelver.errors import DataError

SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
# a batch of this many rows keeps the encoder busy and the memory per actor small
DEFAULT_BATCH_ROWS = 2048


# ---- the input: files, their rows, and any row range of them ----------------------------
@dataclass(frozen=True)
class Source:
    """The input's files in order, their format and their row counts."""

    files: tuple[str, ...]
    kind: str
    rows: tuple[int, ...]

    @property
    def total(self) -> int:
        return sum(self.rows)

    def pieces(self, start: int, stop: int) -> Iterator[tuple[str, int, int]]:
        """``(file, first row in it, rows)`` covering the input's rows ``[start, stop)``."""
        begin = 0
        for file, rows in zip(self.files, self.rows, strict=True):
            low, high = max(start, begin), min(stop, begin + rows)
            if low < high:
                yield file, low - begin, high - low
            begin += rows


def open_source(path: Path, text_column: str) -> Source:
    """The input, checked before any work starts: readable, one format, the text column in
    every file, and at least one row."""
    files, kind = input_files(path)
    rows = tuple(_file_rows(file, kind, text_column) for file in files)
    if not sum(rows):
        raise DataError(f"{path} has no rows to classify; pass a file or folder with queries in it")
    return Source(tuple(str(f.resolve()) for f in files), kind, rows)


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


def _file_rows(file: Path, kind: str, column: str) -> int:
    import pyarrow as pa

    try:
        return _parquet_rows(file, column) if kind == "parquet" else _csv_rows(file, column)
    except pa.ArrowException as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(f"cannot read {file} as {kind} ({first_line}); fix or remove that file") from None


def _parquet_rows(file: Path, column: str) -> int:
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    _require_column(file, parquet.schema_arrow.names, column)
    return parquet.metadata.num_rows


def _csv_rows(file: Path, column: str) -> int:
    import pyarrow as pa
    import pyarrow.csv as pacsv

    _require_column(file, pacsv.open_csv(file, parse_options=_csv_parse_options()).schema.names, column)
    # the same parser as the reads, converting only the one column: the counts agree with them
    convert = pacsv.ConvertOptions(include_columns=[column], column_types={column: pa.string()})
    reader = pacsv.open_csv(file, parse_options=_csv_parse_options(), convert_options=convert)
    return sum(batch.num_rows for batch in reader)


def _require_column(file: Path, names: list[str], column: str) -> None:
    if column not in names:
        raise DataError(
            f"{file.name} has no {column!r} column (columns: {', '.join(names)}); "
            "pass --text-column NAME with the column that holds the queries"
        )


def _csv_parse_options() -> Any:
    """Quoted values may hold newlines (queries pasted from logs do), and rows are skipped by
    CSV row, not by line, only when the parser knows it."""
    import pyarrow.csv as pacsv

    return pacsv.ParseOptions(newlines_in_values=True)


def read_rows(source: Source, start: int, stop: int, batch_rows: int = DEFAULT_BATCH_ROWS) -> Iterator[Any]:
    """The input's rows ``[start, stop)`` as Arrow tables, file after file, in order."""
    for file, first, rows in source.pieces(start, stop):
        if source.kind == "parquet":
            yield from _take(_parquet_tables(file, first, batch_rows), rows)
        else:
            yield from _take(_csv_tables(file, first), rows)


def _parquet_tables(file: str, skip: int, batch_rows: int) -> Iterator[Any]:
    """The file's rows from row ``skip`` on; row groups before it are not read."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(file)
    groups = [parquet.metadata.row_group(g).num_rows for g in range(parquet.num_row_groups)]
    first = 0
    while skip >= groups[first]:
        skip -= groups[first]
        first += 1
    for batch in parquet.iter_batches(batch_size=batch_rows, row_groups=range(first, len(groups))):
        table = pa.Table.from_batches([batch])
        if skip < table.num_rows:
            yield table.slice(skip)
        skip = max(skip - table.num_rows, 0)


def _csv_tables(file: str, skip: int) -> Iterator[Any]:
    """The file's rows from row ``skip`` on; the rows before it are parsed, not converted."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    header = pacsv.open_csv(file, parse_options=_csv_parse_options()).schema.names
    # every column read as text: ids keep their leading zeros, and "NA" stays a query
    convert = pacsv.ConvertOptions(column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=False)
    reader = pacsv.open_csv(
        file,
        read_options=pacsv.ReadOptions(skip_rows_after_names=skip),
        parse_options=_csv_parse_options(),
        convert_options=convert,
    )
    for batch in reader:
        yield pa.Table.from_batches([batch])


def _take(tables: Iterator[Any], rows: int) -> Iterator[Any]:
    """The first ``rows`` rows of a stream of tables; reads no further."""
    for table in tables:
        if rows <= 0:
            return
        yield table.slice(0, rows)
        rows -= table.num_rows


def rebatch(tables: Iterable[Any], sizes: Iterable[int]) -> Iterator[Any]:
    """The rows of ``tables`` again, as tables of the given sizes, in order."""
    import pyarrow as pa

    stream, pending, held = iter(tables), [], 0
    for size in sizes:
        while held < size:
            table = next(stream, None)
            if table is None:
                raise DataError(f"the input ended {size - held:,} rows early; was it changed while read?")
            pending.append(table)
            held += table.num_rows
        joined = pa.concat_tables(pending, promote_options="default")
        yield joined.slice(0, size)
        pending, held = [joined.slice(size)], held - size


# ---- writers -----------------------------------------------------------------------------
def write_parquet(tables: Iterable[Any], path: Path) -> int:
    """Write ``tables`` to ``path`` as one Parquet file and return its rows; see ``_write_atomically``."""
    return _write_atomically(tables, path, _write_tables)


def write_csv(tables: Iterable[Any], path: Path) -> int:
    """Write ``tables`` to ``path`` as CSV, for tools that read nothing else. A CSV cell holds no
    list: list columns (``shelver_paths``, ``shelver_candidate``) are written as JSON text there,
    ``[["Shoes","Boots"]]``, which every language parses; Parquet keeps them as Arrow lists."""
    return _write_atomically(tables, path, _write_csv_tables)


def _write_atomically(tables: Iterable[Any], path: Path, write: Any) -> int:
    """The rows go to a hidden temporary name first, renamed onto ``path`` once complete: a
    failed or killed job never leaves a half-written file under the real name."""
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        rows = write(tables, partial)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    if not rows:
        raise DataError(f"no rows to write to {path}; the input has none in that range")
    os.replace(partial, path)
    return rows


def _write_tables(tables: Iterable[Any], path: Path) -> int:
    import pyarrow.parquet as pq

    return _write_stream(tables, path, pq.ParquetWriter)


def _write_csv_tables(tables: Iterable[Any], path: Path) -> int:
    import pyarrow.csv as pacsv

    return _write_stream(map(_lists_as_json, tables), path, pacsv.CSVWriter)


def _write_stream(tables: Iterable[Any], path: Path, open_writer: Any) -> int:
    """Every table through one writer, opened on the first table's schema; the rows written."""
    writer, rows = None, 0
    try:
        for table in tables:
            writer = writer or open_writer(str(path), table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def _lists_as_json(table: Any) -> Any:
    import pyarrow as pa

    for i, field in enumerate(table.schema):
        if pa.types.is_list(field.type):
            text = [
                None if v is None else json.dumps(v, ensure_ascii=False) for v in table.column(i).to_pylist()
            ]
            table = table.set_column(i, pa.field(field.name, pa.string()), pa.array(text, pa.string()))
    return table
