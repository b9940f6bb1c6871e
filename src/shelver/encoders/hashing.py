"""A torch-free, deterministic encoder: hashed character n-grams, L2-normalised.

Weak next to a transformer, but instant and stable across machines: right for unit tests and
as a lexical baseline. It computes what scikit-learn's ``HashingVectorizer`` (char_wb 2-4-grams,
signed MurmurHash3 buckets, l2 norm) computes, in Python and NumPy, so serving a hashing model
imports no scikit-learn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from shelver.errors import ConfigError
from shelver.features import char_wb_ngrams

MASK = 0xFFFFFFFF


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
        rows, columns, signs = [], [], []
        for i, text in enumerate(texts):
            for ngram in char_wb_ngrams(str(text).lower(), 2, 4):
                column, sign = signed_bucket(ngram, self._dim)
                rows.append(i)
                columns.append(column)
                signs.append(sign)
        out = np.zeros((len(texts), self._dim), dtype=np.float64)
        np.add.at(out, (np.array(rows, np.intp), np.array(columns, np.intp)), np.array(signs, np.float64))
        norms = np.sqrt((out * out).sum(axis=1, keepdims=True))
        return (out / np.where(norms > 0, norms, 1.0)).astype(np.float32)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.spec.encode()).hexdigest()


@lru_cache(maxsize=1 << 16)
def signed_bucket(feature: str, n_buckets: int) -> tuple[int, float]:
    """scikit-learn's FeatureHasher: the bucket ``|h| mod n`` and the sign of ``h``."""
    h = murmurhash3_32(feature.encode("utf-8"))
    if h == -(1 << 31):  # |h| overflows int32: scikit-learn's special case
        return (2147483647 - (n_buckets - 1)) % n_buckets, -1.0
    return abs(h) % n_buckets, 1.0 if h >= 0 else -1.0


def murmurhash3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86 32-bit, signed, as ``sklearn.utils.murmurhash3_32`` computes it."""
    h = seed & MASK
    tail_start = len(data) - len(data) % 4
    for start in range(0, tail_start, 4):
        h ^= _mix(int.from_bytes(data[start : start + 4], "little"))
        h = ((((h << 13) | (h >> 19)) & MASK) * 5 + 0xE6546B64) & MASK
    tail = data[tail_start:]
    if tail:
        h ^= _mix(int.from_bytes(tail, "little"))
    h ^= len(data)
    h = ((h ^ (h >> 16)) * 0x85EBCA6B) & MASK
    h = ((h ^ (h >> 13)) * 0xC2B2AE35) & MASK
    h ^= h >> 16
    return h - (1 << 32) if h & 0x80000000 else h


def _mix(k: int) -> int:
    k = (k * 0xCC9E2D51) & MASK
    k = ((k << 15) | (k >> 17)) & MASK
    return (k * 0x1B873593) & MASK
