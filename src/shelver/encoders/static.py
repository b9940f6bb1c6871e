"""Static token embeddings distilled from a sentence-transformers model: the fastest CPU encoder.

``shelver distill --encoder minilm --out DIR`` runs every token of the model's vocabulary through
the model on its own (``[CLS] token [SEP]``, pooled as the model pools) once, and keeps the table.
A text's embedding is then the mean of its tokens' rows, L2-normalised: a table look-up and a
mean, with no transformer at query time (the recipe of model2vec, without its PCA and Zipf
weighting: in a valid-split probe with one logistic regression, PCA to 256 dimensions moved L2
accuracy by -0.6 (grocery) and +0.3 points (fashion), PCA with Zipf weights by -0.3 and +0.2).
The directory:

```
static.json        dimension, vocabulary size, the source model's spec and fingerprint
embeddings.npy     (vocabulary, dim) float16 rows, one per token id (special tokens are zero)
tokenizer.json     the source model's tokenizer, read by the ``tokenizers`` package (no torch)
```

With the lexical features beside it, it matched MiniLM's test L2 accuracy on fashion and grocery
at a sixth to a tenth of MiniLM's (ONNX) batch-1 time; alone it is fastest, 1.4 (fashion) and 6.3
(grocery) points below (``benchmarks/results/static_encoder.md``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shelver.encoders.base import token_ids
from shelver.errors import ConfigError, ModelDirError

CONFIG_FILE = "static.json"
EMBEDDINGS_FILE = "embeddings.npy"
TOKENIZER_FILE = "tokenizer.json"
# titles and queries are short; a pasted paragraph is cut here rather than averaged whole
MAX_TOKENS = 128
# texts tokenized and averaged at once: their (tokens, dim) block stays in cache. 20,000 fashion
# titles through MiniLM's tokenizer and a 30,522 x 384 table: 19-24k texts/s in chunks of 256,
# 11-14k in chunks of 8,192 (a 190 MB block)
CHUNK = 256


class StaticEncoder:
    """The mean of a text's token rows in ``embeddings.npy``; ``spec`` is ``"static:<directory>"``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.spec = f"static:{self.directory}"
        self.config = read_static_config(self.directory)
        self.vectors = np.load(self.directory / EMBEDDINGS_FILE)  # float16: widened per text, not at load
        self._tokenizer = _load_tokenizer(self.directory / TOKENIZER_FILE)

    @classmethod
    def from_spec(cls, spec: str) -> StaticEncoder:
        _, _, directory = spec.partition(":")
        if not directory:
            raise ConfigError(f"a static encoder spec is 'static:<directory>', got {spec!r}")
        return cls(directory)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if len(texts) == 1:  # the request path
            ids = token_ids(self._tokenizer, texts, special_tokens=False)[0]
            return _unit_row(self.vectors[ids].sum(axis=0, dtype=np.float32)) if ids else self._zeros(1)
        out = [self._encode_chunk(texts[s : s + CHUNK]) for s in range(0, len(texts), CHUNK)]
        return np.concatenate(out) if out else self._zeros(0)

    def _encode_chunk(self, texts: Sequence[str]) -> np.ndarray:
        tokens = token_ids(self._tokenizer, texts, special_tokens=False)
        lengths = np.array([len(t) for t in tokens], dtype=np.intp)
        ids = np.fromiter((i for t in tokens for i in t), dtype=np.intp, count=int(lengths.sum()))
        out = self._zeros(len(texts))
        filled = lengths > 0  # an empty text keeps a zero vector
        if filled.any():
            starts = (np.cumsum(lengths) - lengths)[filled]
            rows = self.vectors[ids].astype(np.float32)
            out[filled] = np.add.reduceat(rows, starts) / lengths[filled, None]
        return _unit(out)

    def _zeros(self, n: int) -> np.ndarray:
        return np.zeros((n, self.dim), dtype=np.float32)

    def fingerprint(self) -> str:
        """SHA-256 of the table and the tokenizer: equal fingerprints embed identically."""
        digest = hashlib.sha256((self.directory / TOKENIZER_FILE).read_bytes())
        digest.update((self.directory / EMBEDDINGS_FILE).read_bytes())
        return digest.hexdigest()


def distill(source: str, out: str | Path, *, batch_size: int = 1024, progress: bool = True) -> StaticEncoder:
    """Write the static encoder of the sentence-transformers model ``source`` into ``out``.

    Needs torch (``pip install 'shelver[encoders]'``); the result runs without it. MiniLM's 30,522
    tokens take about a minute on two CPU cores.
    """
    from shelver.encoders.sentence import SentenceEncoder

    encoder = SentenceEncoder(source)
    table = _token_table(encoder.model, batch_size, progress)
    target = Path(out)
    target.mkdir(parents=True, exist_ok=True)
    np.save(target / EMBEDDINGS_FILE, table.astype(np.float16))
    encoder.model.tokenizer.backend_tokenizer.save(str(target / TOKENIZER_FILE))
    info = {"dim": int(table.shape[1]), "vocabulary": int(table.shape[0]), "source_spec": source}
    info |= {"source_fingerprint": encoder.fingerprint(), "recipe": "[CLS] token [SEP], model pooling"}
    (target / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return StaticEncoder(target)


def _token_table(st_model: Any, batch_size: int, progress: bool) -> np.ndarray:
    """``(vocabulary, dim)``: each token id embedded alone between the model's special tokens."""
    import torch

    tokenizer = st_model.tokenizer
    special = set(tokenizer.all_special_ids)
    ids = torch.arange(len(tokenizer), dtype=torch.long)[:, None]
    rows = []
    with torch.inference_mode():
        for start in _progress(range(0, len(ids), batch_size), progress):
            batch = ids[start : start + batch_size]
            rows.append(_embed_alone(st_model, tokenizer, batch))
    table = torch.cat(rows).float().numpy()
    table[sorted(i for i in special if i < len(table))] = 0.0
    return table


def _embed_alone(st_model: Any, tokenizer: Any, batch: Any) -> Any:
    import torch

    first = torch.full_like(batch, tokenizer.cls_token_id)
    last = torch.full_like(batch, tokenizer.sep_token_id)
    input_ids = torch.cat([first, batch, last], dim=1)
    features = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    if "token_type_ids" in tokenizer.model_input_names:
        features["token_type_ids"] = torch.zeros_like(input_ids)
    return st_model(features)["sentence_embedding"]


def read_static_config(directory: Path) -> dict[str, Any]:
    missing = [n for n in (CONFIG_FILE, EMBEDDINGS_FILE, TOKENIZER_FILE) if not (directory / n).is_file()]
    if missing:
        raise ModelDirError(
            f"{directory} is not a static encoder directory ({', '.join(missing)} missing); "
            "create it with 'shelver distill --encoder minilm --out DIR'"
        )
    return json.loads((directory / CONFIG_FILE).read_text())


def _load_tokenizer(path: Path) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=MAX_TOKENS)
    return tokenizer


def _unit_row(vector: np.ndarray) -> np.ndarray:
    """``(1, dim)``: one text's row sum scaled to unit length (the direction of their mean)."""
    norm = float(np.sqrt(vector @ vector))
    return (vector / norm if norm > 0 else vector)[None, :]


def _unit(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.where(norms > 0, norms, 1.0)).astype(np.float32, copy=False)


def _progress(starts: range, progress: bool):
    if not progress:
        return starts
    from tqdm.auto import tqdm

    return tqdm(starts, desc="distilling token embeddings", unit="batch")
