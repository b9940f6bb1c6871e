"""The static encoder (``shelver distill``) against MiniLM through ONNX int8: accuracy and speed.

Three models per data set, each trained as ``shelver train`` trains (the settings of
``benchmarks/configs/frozen_lexical_flat.toml``: flat head, C=10, calibrated on valid), only the
encoder and the lexical features differ:

  minilm + lexical   the demo's model, its encoder exported to ONNX int8 per channel for serving
                     (fp32 where int8 fails the export's 99.5% agreement check, as on grocery)
  static + lexical   MiniLM's static token table (``shelver distill``) with the same lexical features
  static             the table alone: no TF-IDF to compute per query

Accuracy on ``valid`` and ``test``; then, in one process with one thread each, the three models'
batch-1 ``classify`` and encoder-only times on the test texts, the models taking turns in blocks
of 100 texts so that a burst of other load hits all three alike, and batch-64 throughput in
alternating rounds.

    PYTHONPATH=src nice python benchmarks/static_encoder.py [--datasets fashion grocery] [--work DIR]

Writes ``benchmarks/results/static_encoder.json`` and ``.md``. Models are kept in ``--work``
(default ``/tmp/shelver-static``): a rerun reuses them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from _results import write_results

from shelver.config import load_config
from shelver.data import LabeledData, read_labeled
from shelver.model_dir import load_model
from shelver.report import evaluate
from shelver.taxonomy import Taxonomy

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHELVER_SHARED_DATA", ROOT.parent / "shared" / "data"))
CONFIG = ROOT / "benchmarks" / "configs" / "frozen_lexical_flat.toml"
MODELS = {
    "minilm + lexical": ("encoder.name=minilm",),
    "static + lexical": ("encoder.name=static:{static}",),
    "static": ("encoder.name=static:{static}", "lexical.enabled=false"),
}
BATCH = 64
# batch-1 timing: texts per turn of one model, and untimed calls that warm its caches first
BLOCK, WARM = 100, 20


def splits(dataset: str, work: Path) -> tuple[Taxonomy, dict[str, LabeledData]]:
    """The shared data set's splits, as files ``shelver train`` would read."""
    import pandas as pd

    frame = pd.read_csv(SHARED / dataset / "products.csv", dtype=str, keep_default_na=False)
    taxonomy = Taxonomy.load(SHARED / dataset / "taxonomy.json")
    out = {}
    for split in ("train", "valid", "test"):
        path = work / dataset / f"{split}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame[frame["split"] == split][["text", "category", "subcategory"]].to_csv(path, index=False)
        out[split] = read_labeled(path, taxonomy)
    return taxonomy, out


def static_table(work: Path) -> Path:
    from shelver.encoders.static import distill

    target = work / "static-minilm"
    if not (target / "static.json").is_file():
        distill("minilm", target, progress=False)
    return target


def trained(name: str, dataset: str, data: dict[str, LabeledData], taxonomy: Taxonomy, work: Path) -> Path:
    """Train (or reuse) one model; the MiniLM one also gets its ONNX export, as served."""
    from shelver.export import export_onnx
    from shelver.training import train_model

    root = work / dataset / name.replace(" + ", "-")
    if not (root / "manifest.json").is_file():
        overrides = [o.format(static=static_table(work)) for o in MODELS[name]]
        config = load_config(CONFIG, overrides)
        started = time.perf_counter()
        train_model(config, taxonomy, data["train"], progress=False, valid=data["valid"]).save(root)
        print(f"{dataset} {name}: trained in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    if name.startswith("minilm") and not (root / "onnx").is_dir():
        # as the bootstrap pipeline exports: fp32 where int8 fails the agreement check
        export_onnx(root, data["valid"].texts, progress=False, fallback_fp32=True)
    return root


def accuracy(root: Path, data: dict[str, LabeledData]) -> dict[str, Any]:
    model = load_model(root, encoder="serving")
    out = {}
    for split in ("valid", "test"):
        metrics = evaluate(model, data[split]).metrics
        out[split] = {
            "l1_accuracy": metrics["level1"]["accuracy"],
            "l2_accuracy": metrics["level2"]["accuracy"],
            "l2_macro_f1": metrics["level2"]["macro_f1"],
            "l2_coverage_at_precision_0.95": metrics["coverage_at_precision"]["level2"]["0.95"],
        }
    return out


def latency(roots: dict[str, Path], texts: list[str], n: int) -> dict[str, Any]:
    """Batch 1, one thread: p50 / p99 in ms. The models take turns in blocks of ``BLOCK`` texts:
    load bursts hit all of them alike, and each block runs with its own model's weights in cache
    (as a service holding one model does; turns of one query would time cold caches)."""
    models = {name: load_model(root, encoder="serving", threads=1) for name, root in roots.items()}
    times: dict[str, list[float]] = {f"{k}|{part}": [] for k in models for part in ("encoder", "classify")}
    stream = (texts * (n // len(texts) + 1))[:n]
    for start in range(0, n, BLOCK):
        for name, model in models.items():
            for part, fn in (("encoder", model.encoder_.encode), ("classify", model.classify)):
                for text in texts[:WARM]:
                    fn([text])
                times[f"{name}|{part}"] += _timed(fn, stream[start : start + BLOCK])
    out: dict[str, Any] = {name: {} for name in models}
    for key, values in times.items():
        name, part = key.split("|")
        ms = np.asarray(values) * 1e3
        out[name][part] = {
            "p50_ms": round(float(np.median(ms)), 4),
            "p99_ms": round(float(np.percentile(ms, 99)), 4),
        }
    return out


def _timed(fn: Any, texts: list[str]) -> list[float]:
    out = []
    for text in texts:
        started = time.perf_counter()
        fn([text])
        out.append(time.perf_counter() - started)
    return out


def throughput(roots: dict[str, Path], texts: list[str], rounds: int) -> dict[str, float]:
    """``classify`` at batch 64, every core, alternating rounds: the median queries per second."""
    models = {name: load_model(root, encoder="serving") for name, root in roots.items()}
    batches = [texts[i : i + BATCH] for i in range(0, len(texts) - BATCH + 1, BATCH)]
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, model in models.items():
            started = time.perf_counter()
            for batch in batches:
                model.classify(batch)
            rates[name].append(len(batches) * BATCH / (time.perf_counter() - started))
    return {name: round(float(np.median(values)), 1) for name, values in rates.items()}


def run_dataset(dataset: str, args: argparse.Namespace) -> dict[str, Any]:
    work = Path(args.work)
    taxonomy, data = splits(dataset, work)
    roots = {name: trained(name, dataset, data, taxonomy, work) for name in MODELS}
    out: dict[str, Any] = {"accuracy": {name: accuracy(root, data) for name, root in roots.items()}}
    out["onnx_quantization"] = json.loads((roots["minilm + lexical"] / "onnx" / "encoder.json").read_text())[
        "quantization"
    ]
    texts = data["test"].texts
    out["latency_batch_1"] = latency(roots, texts, args.queries)
    out["throughput_batch_64_q_per_s"] = throughput(roots, texts, args.rounds)
    return out


def markdown(results: dict[str, Any]) -> str:
    lines = [
        "# The static encoder against MiniLM through ONNX",
        "",
        f"`{results['command']}`",
        "",
        f"Machine: {results['machine']}; load average at start {results['load_average_at_start']}. "
        "Latency: batch 1, one thread, the models taking turns in blocks of 100 test texts. "
        "Throughput: `classify` at batch 64, every core. Targets (issue 7): p50 ≤ 0.7 ms, "
        "p99 ≤ 1.5 ms, ≥ 2,500 q/s.",
        "",
        "| data set | model | valid L2 acc | test L1 acc | test L2 acc | test L2 macro-F1 | "
        "test L2 cov @ P0.95 | encoder p50 ms | classify p50 / p99 ms | batch 64 q/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dataset, r in results["datasets"].items():
        for name, acc in r["accuracy"].items():
            lat, test = r["latency_batch_1"][name], acc["test"]
            quantization = "fp32" if r["onnx_quantization"].startswith("none") else "int8"
            label = f"{name} (ONNX {quantization})" if name.startswith("minilm") else name
            lines.append(
                f"| {dataset} | {label} | {acc['valid']['l2_accuracy']:.3f} | {test['l1_accuracy']:.3f} | "
                f"{test['l2_accuracy']:.3f} | {test['l2_macro_f1']:.3f} | "
                f"{test['l2_coverage_at_precision_0.95']:.3f} | {lat['encoder']['p50_ms']:.3f} | "
                f"{lat['classify']['p50_ms']:.3f} / {lat['classify']['p99_ms']:.3f} | "
                f"{r['throughput_batch_64_q_per_s'][name]:,.0f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["fashion", "grocery"])
    parser.add_argument("--work", default="/tmp/shelver-static")
    parser.add_argument("--queries", type=int, default=3000, help="batch-1 timings per model")
    parser.add_argument("--rounds", type=int, default=5, help="batch-64 rounds per model")
    args = parser.parse_args()
    results: dict[str, Any] = {
        "command": "python benchmarks/static_encoder.py " + shlex.join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "datasets": {},
    }
    for dataset in args.datasets:
        results["datasets"][dataset] = run_dataset(dataset, args)
        write_results("static_encoder", results, markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
