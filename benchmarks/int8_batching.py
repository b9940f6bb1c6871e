"""Which int8 MiniLM graph could the service micro-batch? Batch invariance, accuracy and speed.

The service batches a model only when a batch leaves every answer as a single-query call gives
it (``service/batcher.py``). onnxruntime's dynamic int8 graph (``quantize_dynamic``, per channel),
which ``shelver export`` shipped before, is not batch-invariant: its activations are quantized
with one scale per call, taken from the whole batch, so a query's embedding moves with its
neighbours'. This script measures, on one model in one process, each candidate graph built from
the same fp32 export:

- ``fp32``: the exported graph as is;
- ``per-token int8``: what ``shelver export`` ships (``shelver.quantize``: one activation scale
  per token, weights per channel);
- ``dynamic int8``: weights per channel, activations per call;
- ``static int8``: activations quantized with scales calibrated once on training texts
  (MinMax, QOperator; attention's activation-by-activation products kept in fp32);
- ``static int8, FFN2 fp32``: the same, with each layer's second feed-forward product in fp32;
- ``MatMulNBits 8-bit``: weight-only 8-bit blocks of 32, activations quantized per row
  (``accuracy_level`` 4).

For each: the largest embedding gap between one query alone and in a batch of 16 (0 up to
float rounding: invariant), the cosine to the fp32 embedding (mean and minimum), the share of
fp32's paths kept through the model's own heads, and queries/s on one thread at batch 1, 16
and 64. The texts are query forms (the first three words of fashion test titles: real queries
are short) and, for speed, the full titles too.

Usage (from the repo root, on the demo model: MiniLM + lexical, as ``make demo`` trains it):

    .venv/bin/python benchmarks/int8_batching.py --model runs/demo/model --data examples/fashion

Writes ``benchmarks/results/int8_batching.{json,md}``.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
from _results import write_results
from onnxruntime.quantization import CalibrationDataReader
from service_batching import first_words, machine
from serving import machine_probe

from shelver.encoders.onnx import OnnxEncoder
from shelver.export import FP32, FP32_FILE, MODEL_FILE, _export_graph, _sentence_encoder, _write_config
from shelver.model_dir import load_model
from shelver.quantize import QUANTIZERS

BATCHES = (1, 16, 64)
CALIBRATION_ROWS = 512


def build_variants(model_dir: Path, train_texts: list[str], work: Path) -> dict[str, Path]:
    """Every candidate graph, each in its own ONNX encoder directory under ``work``."""
    fp32 = work / "fp32"
    fp32.mkdir()
    info = _export_graph(_sentence_encoder(load_model(model_dir)), fp32)
    (fp32 / FP32_FILE).rename(fp32 / MODEL_FILE)
    _write_config(fp32, {**info, "quantization": FP32})
    calibration = _calibration_texts(train_texts)
    builders: dict[str, Callable[[Path, Path], None]] = {
        "per-token int8 (shipped)": QUANTIZERS["per_token"],
        "dynamic int8 (shipped before)": QUANTIZERS["dynamic"],
        "static int8": lambda src, dst: _static(src, dst, calibration, keep_ffn2=False),
        "static int8, FFN2 fp32": lambda src, dst: _static(src, dst, calibration, keep_ffn2=True),
        "MatMulNBits 8-bit": _nbits,
    }
    out = {"fp32": fp32}
    for i, (name, build) in enumerate(builders.items()):
        target = work / f"v{i}"
        shutil.copytree(fp32, target)
        build(fp32 / MODEL_FILE, target / MODEL_FILE)
        out[name] = target
    return out


def _calibration_texts(texts: list[str]) -> list[str]:
    rows = np.random.default_rng(0).choice(len(texts), min(CALIBRATION_ROWS, len(texts)), replace=False)
    chosen = [texts[i] for i in rows]
    half = len(chosen) // 2
    return chosen[:half] + [first_words(t) for t in chosen[half:]]


def _static(src: Path, dst: Path, texts: list[str], keep_ffn2: bool) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    products = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "MatMul"]
    keep = [n for n in products if n.endswith(("self/MatMul", "self/MatMul_1"))]
    if keep_ffn2:
        keep += [n for n in products if n.endswith("/output/dense/MatMul") and "attention" not in n]
    quantize_static(
        str(src),
        str(dst),
        _Calibration(OnnxEncoder(src.parent), texts),
        quant_format=QuantFormat.QOperator,
        per_channel=True,
        weight_type=QuantType.QInt8,
        activation_type=QuantType.QUInt8,
        calibrate_method=CalibrationMethod.MinMax,
        op_types_to_quantize=["MatMul"],
        nodes_to_exclude=keep,
    )


class _Calibration(CalibrationDataReader):
    """Batches of 16 tokenized texts, as ``quantize_static`` reads them."""

    def __init__(self, encoder: OnnxEncoder, texts: list[str]) -> None:
        self.encoder = encoder
        self.batches = iter([texts[i : i + 16] for i in range(0, len(texts), 16)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self.batches, None)
        return None if batch is None else self.encoder.feed(batch)


def _nbits(src: Path, dst: Path) -> None:
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(src)), bits=8, block_size=32, is_symmetric=True, accuracy_level=4
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(dst), use_external_data_format=False)


def session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def quality(
    model, encoder: OnnxEncoder, run: ort.InferenceSession, texts: list[str], fp32: np.ndarray
) -> dict:
    """Batch gap (alone vs batches of 16), cosine to fp32 and fp32's paths kept."""
    alone, together = embed(encoder, run, texts, 1), embed(encoder, run, texts, 16)
    cosine = (alone * fp32).sum(axis=1) / np.linalg.norm(alone, axis=1) / np.linalg.norm(fp32, axis=1)
    leaves = [model.decode(*model.head_proba(model.join(e, texts)))[1] for e in (alone, fp32)]
    return {
        "batch_gap": float(np.abs(alone - together).max()),
        "cosine_mean": round(float(cosine.mean()), 5),
        "cosine_min": round(float(cosine.min()), 5),
        "paths_kept": round(float((leaves[0] == leaves[1]).mean()), 4),
    }


def embed(encoder: OnnxEncoder, run: ort.InferenceSession, texts: list[str], size: int) -> np.ndarray:
    return np.vstack([run.run(None, one)[0] for one in feeds(encoder, texts, size)])


def feeds(encoder: OnnxEncoder, texts: list[str], size: int) -> list[dict[str, np.ndarray]]:
    return [encoder.feed(texts[i : i + size]) for i in range(0, len(texts), size)]


def speed(encoder: OnnxEncoder, run: ort.InferenceSession, texts: list[str], rounds: int) -> dict:
    """Median queries/s over ``rounds`` passes at each batch size, one thread."""
    out = {}
    for size in BATCHES:
        calls = feeds(encoder, texts, size)[: max(8, 512 // size)]
        rates = []
        for _ in range(rounds):
            started = time.perf_counter()
            for one in calls:
                run.run(None, one)
            rates.append(len(calls) * size / (time.perf_counter() - started))
        out[f"batch_{size}_q_per_s"] = round(float(np.median(rates)))
    out["batch_16_over_1"] = round(out["batch_16_q_per_s"] / out["batch_1_q_per_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("runs/demo/model"))
    parser.add_argument("--data", type=Path, default=Path("examples/fashion"), help="train.csv and test.csv")
    parser.add_argument("--queries", type=int, default=512, help="test rows measured")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    model = load_model(args.model)
    titles = pd.read_csv(args.data / "test.csv")["text"].astype(str).tolist()
    titles = [titles[i] for i in np.random.default_rng(1).permutation(len(titles))[: args.queries]]
    forms = [first_words(t) for t in titles]
    with tempfile.TemporaryDirectory(prefix="int8-batching-") as work:
        train = pd.read_csv(args.data / "train.csv")["text"].astype(str).tolist()
        variants = build_variants(args.model, train, Path(work))
        results = {"machine": machine(), "probe_start": machine_probe(), "variants": {}}
        encoder = OnnxEncoder(variants["fp32"])
        sessions = {name: session(d / MODEL_FILE) for name, d in variants.items()}
        reference = embed(encoder, sessions["fp32"], forms, 1)
        for name, run in sessions.items():
            row = {"query_forms": quality(model, encoder, run, forms, reference)}
            row["query_forms"] |= speed(encoder, run, forms, args.rounds)
            row["titles"] = speed(encoder, run, titles, args.rounds)
            results["variants"][name] = row
            print(name, row, flush=True)
        results["probe_end"] = machine_probe()
    results["command"] = (
        f"benchmarks/int8_batching.py --model {args.model} --data {args.data} --queries {args.queries}"
    )
    write_results("int8_batching", results, render(results))


def render(results: dict) -> str:
    lines = [
        "# Which int8 MiniLM graph could the service micro-batch?",
        "",
        f"Command (from the repo root): `{results['command']}`",
        "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, AVX-512 VNNI: "
        f"{results['machine']['avx512_vnni']}. One onnxruntime thread. Speed probe at start / end: "
        f"{results['probe_start']} / {results['probe_end']}.",
        "",
        "batch gap: the largest difference of one embedding component between a query alone and in a "
        "batch of 16 (float rounding is ~1e-7; anything above moves answers). Quality on query forms "
        "(the first three words of fashion test titles); speed on query forms and on full titles.",
        "",
        "| graph | batch gap | cosine to fp32 (mean / min) | fp32 paths kept | q/s batch 1 / 16 / 64 "
        "(query forms) | 16 ÷ 1 | q/s batch 1 / 16 / 64 (titles) | 16 ÷ 1 |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results["variants"].items():
        q, t = row["query_forms"], row["titles"]
        lines.append(
            f"| {name} | {q['batch_gap']:.1e} | {q['cosine_mean']} / {q['cosine_min']} | "
            f"{q['paths_kept']:.2%} | {_rates(q)} | {q['batch_16_over_1']}× | {_rates(t)} | "
            f"{t['batch_16_over_1']}× |"
        )
    return "\n".join(lines) + "\n"


def _rates(row: dict) -> str:
    return " / ".join(str(row[f"batch_{b}_q_per_s"]) for b in BATCHES)


if __name__ == "__main__":
    main()
