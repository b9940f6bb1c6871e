"""int8 weights with per-token activation scales: an int8 encoder whose answers a batch never moves.

onnxruntime's dynamic quantization scales a MatMul's activations once per call, over the whole
batch, so a query's embedding moves with its neighbours' and the service cannot micro-batch it
exactly. Here every weight product ``X @ W`` (W an initializer, as in every Linear layer) becomes

```
scale = max(|X|, over the last axis) / 127         one scale per token: no neighbour in it
Xq    = uint8(round(X / scale) + 128)
Y     = float(MatMulInteger(Xq, Wq, 128)) * scale * w_scale     Wq int8, one scale per column
```

A token's integers, and so its embedding, depend on that token alone. The products that read
the same input (a layer's query, key and value) share its quantization. The word-embedding
table is stored int8 too, with one scale per row. The attention products
of two activations stay fp32, as dynamic quantization leaves them. Measured against dynamic
quantization in ``benchmarks/results/int8_batching.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# uint8 with this zero point holds a symmetric int8 range: round(X / scale) is within ±127
ZERO_POINT = 128
MIN_OPSET = 18  # ReduceMax takes its axes as an input from opset 18
# embedding tables with this many rows or more are stored int8 (MiniLM's words: 30,522 x 384,
# 47 MB in fp32, 12 MB in int8); the small position and segment tables stay fp32
VOCABULARY_ROWS = 4096


def quantize_per_token(source: Path, target: Path) -> int:
    """Write ``source``'s graph with per-token int8 weight products to ``target``; the number of
    products quantized."""
    import onnx

    model = onnx.load(str(source))
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if opset < MIN_OPSET:
        raise ValueError(
            f"per-token quantization needs ONNX opset {MIN_OPSET} or later, the graph has {opset}"
        )
    count = _rewrite(model.graph)
    onnx.save(model, str(target))
    return count


def quantize_per_call(source: Path, target: Path) -> None:
    """onnxruntime's dynamic int8: weights per channel, activations with one scale per call (the
    whole batch's). Faster alone, but a batch moves its answers."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=True, weight_type=QuantType.QInt8)


# the quantizer of each ExportStage.int8 method (config.INT8_CHOICES names them; a test pins both)
QUANTIZERS: dict[str, Callable[[Path, Path], object]] = {
    "per_token": quantize_per_token,
    "dynamic": quantize_per_call,
}


def _rewrite(graph: Any) -> int:
    from onnx import numpy_helper

    weights = {i.name: i for i in graph.initializer}
    graph.initializer.extend(_constants())
    nodes, scales, count = [], {}, 0
    for node in list(graph.node):
        if _is_vocabulary(node, weights):
            nodes += _int8_rows(graph, numpy_helper.to_array(weights[node.input[0]]), node)
            continue
        if node.op_type != "MatMul" or node.input[1] not in weights:
            nodes.append(node)
            continue
        x = node.input[0]
        if x not in scales:
            scales[x] = f"shelver_q{len(scales)}"
            nodes += _quantize_tokens(x, scales[x])
        name = f"shelver_w{count}"
        graph.initializer.extend(_int8_columns(numpy_helper.to_array(weights[node.input[1]]), name))
        nodes += _integer_product(scales[x], name, node.output[0])
        count += 1
    del graph.node[:]
    graph.node.extend(nodes)
    _drop_unused(graph)
    return count


def _constants() -> list[Any]:
    from onnx import numpy_helper

    values = {
        "shelver_last_axis": np.array([-1], np.int64),
        "shelver_tiny": np.array(1e-8, np.float32),
        "shelver_inv127": np.array(1 / 127, np.float32),
        "shelver_one": np.array(1.0, np.float32),
        "shelver_zero_point": np.array(ZERO_POINT, np.uint8),
    }
    return [numpy_helper.from_array(value, name) for name, value in values.items()]


def _quantize_tokens(x: str, p: str) -> list[Any]:
    """``p_scale`` (one per token) and ``p_q`` (uint8) for activations ``x``."""
    from onnx import helper

    return [
        helper.make_node("Abs", [x], [f"{p}_abs"]),
        helper.make_node("ReduceMax", [f"{p}_abs", "shelver_last_axis"], [f"{p}_max"], keepdims=1),
        helper.make_node("Max", [f"{p}_max", "shelver_tiny"], [f"{p}_nonzero"]),
        helper.make_node("Mul", [f"{p}_nonzero", "shelver_inv127"], [f"{p}_scale"]),
        helper.make_node("Div", [x, f"{p}_scale"], [f"{p}_scaled"]),
        # round half to even, shift by the zero point and cast, in one pass
        helper.make_node("QuantizeLinear", [f"{p}_scaled", "shelver_one", "shelver_zero_point"], [f"{p}_q"]),
    ]


def _int8_columns(weights: np.ndarray, name: str) -> list[Any]:
    """``name_q`` (int8) and ``name_scale`` (one per output column) for fp32 ``weights``."""
    from onnx import numpy_helper

    scale = (np.maximum(np.abs(weights).max(axis=0), 1e-8) / 127).astype(np.float32)
    quantized = np.clip(np.round(weights / scale), -127, 127).astype(np.int8)
    return [numpy_helper.from_array(quantized, f"{name}_q"), numpy_helper.from_array(scale, f"{name}_scale")]


def _integer_product(p: str, w: str, output: str) -> list[Any]:
    """``output`` = the int32 product of the quantized activations and weights, scaled back."""
    from onnx import TensorProto, helper

    return [
        helper.make_node("MatMulInteger", [f"{p}_q", f"{w}_q", "shelver_zero_point"], [f"{w}_int32"]),
        helper.make_node("Cast", [f"{w}_int32"], [f"{w}_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{w}_float", f"{p}_scale"], [f"{w}_rows"]),
        helper.make_node("Mul", [f"{w}_rows", f"{w}_scale"], [output]),
    ]


def _is_vocabulary(node: Any, weights: dict[str, Any]) -> bool:
    """A Gather from a large embedding table (the word embeddings; position tables are small)."""
    if node.op_type != "Gather" or node.input[0] not in weights or any(a.i for a in node.attribute):
        return False
    dims = list(weights[node.input[0]].dims)
    return len(dims) == 2 and dims[0] >= VOCABULARY_ROWS


def _int8_rows(graph: Any, table: np.ndarray, node: Any) -> list[Any]:
    """The table as int8 with one scale per row: a token's vector reads its own row alone."""
    from onnx import TensorProto, helper, numpy_helper

    name = f"shelver_{node.input[0].replace('.', '_')}"
    scale = (np.maximum(np.abs(table).max(axis=1, keepdims=True), 1e-8) / 127).astype(np.float32)
    quantized = np.clip(np.round(table / scale), -127, 127).astype(np.int8)
    graph.initializer.extend(
        [numpy_helper.from_array(quantized, f"{name}_q"), numpy_helper.from_array(scale, f"{name}_scale")]
    )
    ids = node.input[1]
    return [
        helper.make_node("Gather", [f"{name}_q", ids], [f"{name}_rows"]),
        helper.make_node("Cast", [f"{name}_rows"], [f"{name}_float"], to=TensorProto.FLOAT),
        helper.make_node("Gather", [f"{name}_scale", ids], [f"{name}_row_scale"]),
        helper.make_node("Mul", [f"{name}_float", f"{name}_row_scale"], [node.output[0]]),
    ]


def _drop_unused(graph: Any) -> None:
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
