"""Frozen-encoder embeddings cached on disk (``benchmarks/.cache``, git-ignored) between runs.

``DiskCachedEncoder`` behaves as the named encoder (same ``spec``, so saved models stay
loadable) but looks each text up in an ``.npy`` file first and embeds only what is missing.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shelver.encoders import make_encoder

CACHE = Path(__file__).resolve().parent / ".cache"


class DiskCachedEncoder:
    def __init__(self, spec: str = "minilm", name: str = "texts", **options: object) -> None:
        self.spec = spec
        self.inner = make_encoder(spec, **options)
        digest = hashlib.sha1(json.dumps([spec, sorted(options.items())], default=str).encode()).hexdigest()
        self.stem = CACHE / f"{name}-{spec.replace(':', '_')}-{digest[:8]}"
        self.table = self._read()

    @property
    def dim(self) -> int:
        return self.inner.dim

    def _read(self) -> dict[str, np.ndarray]:
        texts_file, vectors_file = self.stem.with_suffix(".json"), self.stem.with_suffix(".npy")
        if not texts_file.is_file():
            return {}
        return dict(zip(json.loads(texts_file.read_text()), np.load(vectors_file), strict=True))

    def _write(self) -> None:
        CACHE.mkdir(parents=True, exist_ok=True)
        texts = list(self.table)
        np.save(self.stem.with_suffix(".npy"), np.stack([self.table[t] for t in texts]))
        self.stem.with_suffix(".json").write_text(json.dumps(texts))

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.table]
        if missing:
            self.table.update(zip(missing, self.inner.encode(missing, progress=progress), strict=True))
            self._write()
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.table[t] for t in texts])

    def fingerprint(self) -> str:
        return self.inner.fingerprint()
