"""Cutting a batch into model calls by token count (``OnnxEncoder``'s ``length_chunks``) vs one
padded call per batch: the ONNX encoder's queries/s on one thread, same model, same batches.

A batch is padded to its longest text and every padded token costs what a real one does, while
a call has a fixed cost (the encoder's int8 weights read from memory). The encoder sorts a
batch by token count and starts a new call where padding the rows so far would cost more than
``CALL_TOKENS`` tokens; ``--call-tokens`` lists the values compared (a huge one is one padded
call per ``batch_size`` texts, what the encoder did before). Batches are random draws of
fashion test titles and of their query forms (the first three words), as a service's
micro-batches and a log's rows arrive: unsorted.

Usage (from the repo root, on the demo model):

    .venv/bin/python benchmarks/length_chunks.py --model runs/demo/model --data examples/fashion/test.csv

Writes ``benchmarks/results/length_chunks.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import pandas as pd
from _results import write_results
from service_batching import first_words, machine

from shelver.encoders.onnx import CALL_TOKENS, OnnxEncoder

ONE_CALL = 10**9  # never cut for length: one padded call per batch_size texts


def rate(encoder: OnnxEncoder, batches: list[list[str]], rounds: int) -> float:
    """Median queries/s over ``rounds`` passes through ``batches``."""
    encoder.encode(batches[0])
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        for batch in batches:
            encoder.encode(batch)
        rates.append(sum(map(len, batches)) / (time.perf_counter() - started))
    return round(float(np.median(rates)), 1)


def run(args: argparse.Namespace) -> dict:
    titles = list(dict.fromkeys(pd.read_csv(args.data, dtype=str, keep_default_na=False)["text"]))
    texts = {"titles": titles, "query forms": list(dict.fromkeys(map(first_words, titles)))}
    encoders = {c: OnnxEncoder(args.model / "onnx", threads=1, call_tokens=c) for c in args.call_tokens}
    draw = random.Random(args.seed)
    rows = []
    for kind, pool in texts.items():
        for size in args.batches:
            batches = [draw.sample(pool, size) for _ in range(max(4, args.queries // size))]
            rates = {str(c): rate(encoders[c], batches, args.rounds) for c in args.call_tokens}
            rows.append({"texts": kind, "batch": size, "queries_per_s": rates})
    return {"command": " ".join(sys.argv), "machine": machine(), "rows": rows, "default": CALL_TOKENS}


def markdown(r: dict) -> str:
    tokens = list(r["rows"][0]["queries_per_s"])
    names = [("one padded call" if int(c) == ONE_CALL else f"cut at {c} tokens") for c in tokens]
    head = f"| texts | batch | {' | '.join(names)} | gain |\n| --- | --- |{' --- |' * (len(names) + 1)}"
    lines = []
    for row in r["rows"]:
        rates = [row["queries_per_s"][c] for c in tokens]
        gain = row["queries_per_s"][str(r["default"])] / row["queries_per_s"][str(ONE_CALL)]
        lines.append(
            f"| {row['texts']} | {row['batch']} | {' | '.join(f'{x:,.0f}' for x in rates)} | {gain:.2f}× |"
        )
    m = r["machine"]
    return (
        f"# Cutting batches by length\n\nCommand (from the repo root): `{r['command']}`\n\n"
        f"Machine: {m['cpu']}, {m['cores']} cores, {'with' if m['avx512_vnni'] else 'without'} AVX-512 VNNI; "
        f"speed probe {m['probe']}. Queries/s of the ONNX encoder on one thread (median of the rounds); "
        f"gain: the default ({r['default']} tokens) over one padded call.\n\n{head}\n"
        + "\n".join(lines)
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="CSV whose texts are drawn")
    parser.add_argument("--batches", type=int, nargs="+", default=[4, 16, 64, 256])
    parser.add_argument("--call-tokens", type=int, nargs="+", default=[ONE_CALL, 4, CALL_TOKENS, 16, 32])
    parser.add_argument("--queries", type=int, default=1024, help="queries per round and batch size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = run(args)
    write_results("length_chunks", results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
