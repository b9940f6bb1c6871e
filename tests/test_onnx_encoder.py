"""The ONNX encoder: its one-text path (the request path) gives what its batch path gives one
text, and cutting a batch into calls by length never changes an embedding."""

from __future__ import annotations

import numpy as np

from shelver.encoders.onnx import OnnxEncoder, length_chunks

TEXTS = ["red sneakers", "", "a", "Ünïcode ÇAFÉ straße", "word " * 100, "\ud800 lone surrogate"]


def test_one_text_path_equals_the_general_path(onnx_model_dir):
    encoder = OnnxEncoder(onnx_model_dir / "onnx", threads=1)
    for text in TEXTS:
        one = encoder.encode([text])
        assert one.shape == (1, encoder.dim) and one.dtype == np.float32
        # the general path on one text (no padding either): identical bytes
        np.testing.assert_array_equal(one, encoder._run(encoder.feed([text])))
        np.testing.assert_allclose(np.linalg.norm(one), 1.0, atol=1e-5)
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_a_batch_cut_by_length_embeds_each_text_as_alone(onnx_model_dir):
    encoder = OnnxEncoder(onnx_model_dir / "onnx", threads=1, batch_size=4)
    texts = TEXTS + [f"blue {'cotton ' * n}shirt" for n in range(12)]
    alone = np.vstack([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(encoder.encode(texts), alone, atol=1e-5)  # order kept, rows as alone
    assert len(length_chunks(np.sort([len(encoder.feed([t])["input_ids"][0]) for t in texts]), 4)) > 5


def test_length_chunks_start_a_call_where_padding_would_cost_more():
    assert length_chunks(np.array([3, 3, 4, 4, 5, 9, 9, 30]), 256, call_tokens=8) == [
        slice(0, 5),  # 5 rows padded 5 -> 9 would cost 20 tokens > 8: a new call
        slice(5, 7),
        slice(7, 8),
    ]
    assert length_chunks(np.array([5] * 5), 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]  # at most 2
    assert length_chunks(np.array([], dtype=int), 4) == []
