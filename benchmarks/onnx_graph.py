"""Which ONNX graph serves MiniLM fastest here: float or int8 weights, with or without
onnxruntime's transformer fusions, on one or two threads, one query or 64 at a time.

Each variant is built from the same TorchScript export that ``shelver export`` makes (its
``_export_graph``), then optionally fused by ``onnxruntime.transformers.optimizer`` (attention,
embedding + LayerNorm, bias + GELU into single kernels) and/or quantized to int8 per channel as the
export does. Variants are timed in turns on the same texts (query forms, 4-8 tokens), and their
embeddings compared with PyTorch's (mean cosine). "weight_gb_per_s" divides the layers' weight bytes
by the batch-1 median: batch-1 inference streams every weight once per query, so that figure near
the machine's copy bandwidth says the query is memory-bound, not compute-bound.

    PYTHONPATH=src python benchmarks/onnx_graph.py

Prints a table and writes ``benchmarks/results/onnx_graph.{json,md}``.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_results
from serving import machine_probe

QUERIES = ["red dress", "men running shoes", "blue denim jacket women", "kurta", "black leather belt"]
CALLS = 300  # batch-1 calls per variant and thread count (the first 50 are warm-up)


def build(encoder, directory: Path) -> dict[str, Path]:
    """The four graphs, from one export of ``encoder`` (a ``SentenceEncoder``)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from shelver import export

    export._export_graph(encoder, directory)
    graphs = {"fp32": directory / export.FP32_FILE, "fp32 fused": directory / "fused.onnx"}
    config = encoder.model[0].auto_model.config
    fused = optimize_model(
        str(graphs["fp32"]), "bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size
    )
    fused.save_model_to_file(str(graphs["fp32 fused"]))
    for name in ("fp32", "fp32 fused"):
        graphs[name.replace("fp32", "int8")] = directory / f"{name.replace(' ', '_')}.int8.onnx"
        quantize_dynamic(
            str(graphs[name]),
            str(graphs[name.replace("fp32", "int8")]),
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},  # fused ops lack shape info
        )
    return graphs


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.log_severity_level = 3
    # as shelver's sessions: idle threads sleep (spinning ones would steal the other sessions' cores)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def feeds(tokenizer, texts: list[str]) -> dict[str, np.ndarray]:
    encodings = tokenizer.encode_batch(texts)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def graph_size(path: Path) -> tuple[int, int]:
    """(nodes, bytes of the weights every query reads: all but the embedding tables, of which a
    query reads a few rows)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    weights = (numpy_helper.to_array(t).nbytes for t in model.graph.initializer if "embeddings" not in t.name)
    return len(model.graph.node), sum(weights)


def measure(graphs: dict[str, Path], tokenizer, reference: np.ndarray) -> list[dict]:
    sizes = {name: graph_size(path) for name, path in graphs.items()}
    singles = [feeds(tokenizer, [q]) for q in QUERIES]
    batch = feeds(tokenizer, (QUERIES * 13)[:64])
    rows = []
    for threads in (1, 2):
        sessions = {name: session(path, threads) for name, path in graphs.items()}
        times: dict[str, list[float]] = {name: [] for name in graphs}
        for i in range(CALLS):  # variants in turns: drift in machine speed hits them all alike
            for name, s in sessions.items():
                start = time.perf_counter()
                s.run(None, singles[i % len(singles)])
                times[name].append(time.perf_counter() - start)
        for name, s in sessions.items():
            batch_s = []
            for _ in range(20):
                start = time.perf_counter()
                out = s.run(None, batch)[0]
                batch_s.append(time.perf_counter() - start)
            ms = np.array(times[name][50:]) * 1e3
            nodes, size = sizes[name]
            rows.append(
                {
                    "graph": name,
                    "threads": threads,
                    "nodes": nodes,
                    "layer_weights_mb": round(size / 1e6, 1),
                    "batch1_p50_ms": round(float(np.median(ms)), 3),
                    "batch1_p99_ms": round(float(np.percentile(ms, 99)), 3),
                    "weight_gb_per_s": round(size / 1e6 / (float(np.median(ms)) / 1e3) / 1e3, 2),
                    "batch64_q_per_s": round(64 / float(np.median(batch_s))),
                    "cosine_to_pytorch": round(float(np.mean(np.sum(out * reference, axis=1))), 4),
                }
            )
    return rows


def markdown(result: dict) -> str:
    keys = list(result["rows"][0])
    lines = ["# ONNX graph variants for MiniLM", "", f"`{result['command']}`", "", result["note"], ""]
    lines += [f"Machine, one thread: {result['machine']}", ""]
    lines += ["| " + " | ".join(keys) + " |", "|---" * len(keys) + "|"]
    lines += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in result["rows"]]
    return "\n".join(lines) + "\n"


def main() -> None:
    from tokenizers import Tokenizer

    from shelver.encoders.sentence import SentenceEncoder

    encoder = SentenceEncoder("minilm", max_seq_length=32)  # as shelver trains it
    with tempfile.TemporaryDirectory() as tmp:
        graphs = build(encoder, Path(tmp))
        tokenizer = Tokenizer.from_file(str(Path(tmp) / "tokenizer.json"))
        tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        reference = encoder.encode((QUERIES * 13)[:64])
        before = machine_probe()
        rows = measure(graphs, tokenizer, reference)
    result = {
        "command": "PYTHONPATH=src python benchmarks/onnx_graph.py",
        "note": (
            "batch-1 times are medians of 250 calls (query forms of 4-8 tokens), variants timed in turns; "
            "batch 64 = the same queries, 20 calls; weight_gb_per_s = the layers' weight bytes (embedding "
            "tables left out) / the batch-1 median: the bandwidth a query needs, reading each weight once. "
            "The variants alternate call by call, so each call finds the others' weights in the 36 MB L3: "
            "cold-cache figures, alike for every variant (one session alone, warm, runs ~20% faster)."
        ),
        "machine": {"at_start": before, "at_end": machine_probe()},
        "rows": rows,
    }
    write_results("onnx_graph", result, markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
