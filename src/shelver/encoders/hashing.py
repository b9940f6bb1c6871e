"""A torch-free, deterministic encoder: hashed character n-grams, L2-normalised.

Weak next to a transformer, but instant and stable across machines: right for unit tests and
as a lexical baseline.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from shelver.errors import ConfigError


class HashingEncoder:
    """Character 2–4-grams (word-bounded) hashed into ``dim`` signed buckets."""

    def __init__(self, dim: int = 512) -> None:
        if dim < 8:
            raise ConfigError(f"hashing encoder dim must be at least 8, got {dim}")
        self._dim = dim
        self.spec = f"hashing:{dim}"

    @classmethod
    def from_spec(cls, spec: str) -> HashingEncoder:
        _, _, dim = spec.partition(":")
        if dim and not dim.isdigit():
            raise ConfigError(f"hashing encoder spec must be 'hashing' or 'hashing:DIM', got {spec!r}")
        return cls(int(dim) if dim else 512)

    @property
    def dim(self) -> int:
        return self._dim

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        from sklearn.feature_extraction.text import HashingVectorizer

        vectorizer = HashingVectorizer(
            analyzer="char_wb",
            ngram_range=(2, 4),
            n_features=self._dim,
            alternate_sign=True,
            norm="l2",
            lowercase=True,
        )
        return vectorizer.transform(list(texts)).toarray().astype(np.float32)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.spec.encode()).hexdigest()
