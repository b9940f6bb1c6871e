"""Per-token int8 (shelver.quantize): a token's output depends on that token alone, and stays
close to fp32; onnxruntime's per-call dynamic quantization, by contrast, moves with the batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from shelver.quantize import QUANTIZERS, quantize_per_call, quantize_per_token  # noqa: E402


def _two_layer_graph(path: Path, opset: int = 18) -> None:
    """X (batch, tokens, 8) -> MatMul W1 -> Relu -> MatMul W2 -> Y (batch, tokens, 4)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [rng.normal(size=(8, 16)).astype(np.float32), rng.normal(size=(16, 4)).astype(np.float32)]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "two_layers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", 4])],
        [numpy_helper.from_array(w, f"w{i + 1}") for i, w in enumerate(weights)],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _alone_and_beside_a_loud_neighbour(path: Path) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(1).normal(size=(1, 5, 8)).astype(np.float32)
    loud = 50 * np.random.default_rng(2).normal(size=(1, 5, 8)).astype(np.float32)
    return _run(path, x)[0], _run(path, np.concatenate([x, loud]))[0]


def test_a_token_s_output_depends_on_that_token_alone_and_stays_near_fp32(tmp_path):
    fp32, int8 = tmp_path / "fp32.onnx", tmp_path / "int8.onnx"
    _two_layer_graph(fp32)
    assert quantize_per_token(fp32, int8) == 2
    alone, batched = _alone_and_beside_a_loud_neighbour(int8)
    np.testing.assert_array_equal(alone, batched)
    reference, _ = _alone_and_beside_a_loud_neighbour(fp32)
    assert np.abs(alone - reference).max() < 0.03 * np.abs(reference).max()
    ops = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert "MatMulInteger" in ops and "MatMul" not in ops


def test_onnxruntime_dynamic_quantization_moves_with_the_batch(tmp_path):
    """Why per-token is the export's default: the service could not batch per-call answers."""
    fp32, dynamic = tmp_path / "fp32.onnx", tmp_path / "dynamic.onnx"
    _two_layer_graph(fp32)
    quantize_per_call(fp32, dynamic)
    alone, batched = _alone_and_beside_a_loud_neighbour(dynamic)
    assert np.abs(alone - batched).max() > 1e-3


def test_an_old_opset_is_refused(tmp_path):
    _two_layer_graph(tmp_path / "old.onnx", opset=17)
    with pytest.raises(ValueError, match="opset 18"):
        quantize_per_token(tmp_path / "old.onnx", tmp_path / "out.onnx")


def test_every_int8_method_the_configuration_names_has_a_quantizer():
    from shelver.config import INT8_CHOICES

    assert set(QUANTIZERS) == set(INT8_CHOICES)
