"""The ONNX encoder's one-text path (the request path) gives what its batch path gives one text."""

from __future__ import annotations

import numpy as np

from shelver.encoders.onnx import OnnxEncoder


def test_one_text_path_equals_the_general_path(onnx_model_dir):
    encoder = OnnxEncoder(onnx_model_dir / "onnx", threads=1)
    for text in ["red sneakers", "", "a", "Ünïcode ÇAFÉ straße", "word " * 100, "\ud800 lone surrogate"]:
        one = encoder.encode([text])
        assert one.shape == (1, encoder.dim) and one.dtype == np.float32
        # the general path on one text (no padding either): identical bytes
        np.testing.assert_array_equal(one, encoder._run([text.encode("utf-8", "replace").decode()]))
        np.testing.assert_allclose(np.linalg.norm(one), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)
