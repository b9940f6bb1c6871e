"""sentence-transformers models, loaded lazily from a local directory (never the hub)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from shelver.encoders.base import resolve_model_path

# Queries and product titles are short: 32 tokens covers >99% of them and keeps CPU cost low.
DEFAULT_MAX_SEQ_LENGTH = 32


class SentenceEncoder:
    """A sentence-transformers model by name (``minilm``) or path; torch is imported on first use."""

    def __init__(
        self, spec: str, max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH, batch_size: int = 128
    ) -> None:
        self.spec = spec
        self.path = resolve_model_path(spec)
        self.max_seq_length = max_seq_length
        self.batch_size = batch_size
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer
            from transformers.utils import logging as hf_logging

            shown = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()  # a "Loading weights" bar for a load that takes a blink
            try:
                self._model = SentenceTransformer(self.path, device="cpu")
            finally:
                if shown:
                    hf_logging.enable_progress_bar()
            self._model.max_seq_length = self.max_seq_length
        return self._model

    @property
    def dim(self) -> int:
        getter = getattr(self.model, "get_embedding_dimension", None) or (
            self.model.get_sentence_embedding_dimension
        )
        return int(getter())

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            show_progress_bar=progress,
            convert_to_numpy=True,
            normalize_embeddings=True,
        )
        return np.asarray(vectors, dtype=np.float32)

    def fingerprint(self) -> str:
        """SHA-256 over the weight files and the sequence length that shapes the embeddings."""
        digest = hashlib.sha256(f"max_seq_length={self.max_seq_length}".encode())
        for file in sorted(Path(self.path).rglob("*.safetensors")):
            digest.update(file.read_bytes())
        return digest.hexdigest()
