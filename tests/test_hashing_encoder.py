"""The hashing encoder computes what scikit-learn's HashingVectorizer computes, without it."""

from __future__ import annotations

import random

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.utils import murmurhash3_32 as sklearn_murmurhash3_32

from shelver.encoders import HashingEncoder
from shelver.encoders.hashing import murmurhash3_32

ODD = ["", "!!", "Ünïcode ÇAFÉ straße İstanbul", "日本語のテキスト", "a", "x" * 300, "  tab\t x \n y "]


def test_murmurhash_equals_scikit_learn_on_every_tail_length():
    rng = random.Random(0)
    for _ in range(500):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 13)))
        assert murmurhash3_32(data) == sklearn_murmurhash3_32(data, seed=0), data


def test_embeddings_equal_hashing_vectorizer(tiny_xy):
    texts = [*tiny_xy[0], *ODD]
    for dim in (8, 64, 512):
        reference = HashingVectorizer(
            analyzer="char_wb", ngram_range=(2, 4), n_features=dim, alternate_sign=True, norm="l2"
        ).transform(texts)
        embeddings = HashingEncoder(dim).encode(texts)
        assert embeddings.dtype == np.float32 and embeddings.shape == (len(texts), dim)
        np.testing.assert_array_equal(embeddings, reference.toarray().astype(np.float32))
    assert not HashingEncoder(8).encode([""]).any()
