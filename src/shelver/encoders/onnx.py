"""An exported transformer encoder run by onnxruntime: the serving path, free of torch.

The directory is what ``shelver export`` writes into a model directory (``MODEL/onnx``):

```
encoder.json     max_seq_length, dimension, input names, how it was exported
model.onnx       token ids -> mean-pooled, L2-normalised embeddings (int8 weights by default)
tokenizer.json   the tokenizer, read by the ``tokenizers`` package (Rust, no torch/transformers)
```
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

CONFIG_FILE = "encoder.json"
MODEL_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
# Large enough to amortise onnxruntime's per-call cost, small enough that padding stays cheap.
DEFAULT_BATCH_SIZE = 256
# A batch is padded to its longest text, and each padded token costs what a real one does. A call
# costs about what 8 tokens of padding do: one call's fixed cost is its weights read from memory
# (MiniLM int8, 2-core VM: 0.86 ms for 2 tokens, +50 us a token). Cutting there ran random batches
# of 64 fashion titles 2.10x faster, of their three-word query forms 1.34x (4 to 16 tokens: within
# noise; benchmarks/results/length_chunks.md).
CALL_TOKENS = 8


class OnnxEncoder:
    """Embeddings from ``model.onnx``; ``spec`` is ``"onnx:<directory>"``.

    ``threads`` sets onnxruntime's intra-op threads (``None``: one per core). A service answering
    one query at a time wants 1; a batch job on a dedicated machine wants every core. A call
    holds at most ``batch_size`` texts, cut by length where padding would cost more than
    ``call_tokens`` tokens (``length_chunks``).
    """

    def __init__(
        self,
        directory: str | Path,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        call_tokens: int = CALL_TOKENS,
    ) -> None:
        self.directory = Path(directory)
        self.spec = f"onnx:{self.directory}"
        self.threads = threads
        self.batch_size, self.call_tokens = batch_size, call_tokens
        self.config = read_encoder_config(self.directory)
        self._tokenizer = _load_tokenizer(self.directory, self.config)
        self._session = _load_session(self.directory / MODEL_FILE, threads)
        self._inputs = [i.name for i in self._session.get_inputs()]
        self._outputs = [self._session.get_outputs()[0].name]
        # one text is never padded: its mask is all ones and its type ids all zeros, sliced from
        # arrays made once (the request path then builds one array per call, the token ids)
        made = {"attention_mask": np.ones, "token_type_ids": np.zeros}
        shape = (1, self.max_seq_length)
        self._single = [(n, made[n](shape, np.int64)) for n in self._inputs if n in made]

    @classmethod
    def from_spec(cls, spec: str, **options: Any) -> OnnxEncoder:
        _, _, directory = spec.partition(":")
        if not directory:
            raise ConfigError(f"an ONNX encoder spec is 'onnx:<directory>', got {spec!r}")
        return cls(directory, **options)

    @property
    def dim(self) -> int:
        return int(self.config["dim"])

    @property
    def max_seq_length(self) -> int:
        return int(self.config["max_seq_length"])

    def encode(self, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        if len(texts) == 1:  # the request path: no sorting, no batching, no padding
            return self._run_one(token_ids(self._tokenizer, texts)[0])
        ids = token_ids(self._tokenizer, texts)
        lengths = np.array([len(i) for i in ids], dtype=np.intp)
        order = np.argsort(lengths, kind="stable")  # similar lengths share a call: little padding
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        parts = length_chunks(lengths[order], self.batch_size, self.call_tokens)
        for part in _progress(parts, progress, len(texts)):
            rows = order[part]
            out[rows] = self._run(self._padded([ids[i] for i in rows]))
        return out

    def _run_one(self, tokens: list[int]) -> np.ndarray:
        ids = np.array([tokens], dtype=np.int64)
        feed = {name: values[:, : ids.shape[1]] for name, values in self._single}
        feed["input_ids"] = ids
        return self._session.run(self._outputs, feed)[0].astype(np.float32, copy=False)

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self._session.run(self._outputs, feed)[0].astype(np.float32, copy=False)

    def feed(self, texts: list[str]) -> dict[str, np.ndarray]:
        """The graph's inputs for ``texts``, tokenized and padded together (in the order given)."""
        return self._padded(token_ids(self._tokenizer, texts))

    def _padded(self, ids: list[list[int]]) -> dict[str, np.ndarray]:
        """Token ids padded to the longest, with their attention mask."""
        width = max(len(i) for i in ids)
        columns = {"input_ids": np.full((len(ids), width), int(self.config["pad_id"]), dtype=np.int64)}
        columns["attention_mask"] = np.zeros((len(ids), width), dtype=np.int64)
        for row, tokens in enumerate(ids):
            columns["input_ids"][row, : len(tokens)] = tokens
            columns["attention_mask"][row, : len(tokens)] = 1
        columns["token_type_ids"] = np.zeros_like(columns["attention_mask"])  # one segment
        return {name: columns[name] for name in self._inputs}

    def fingerprint(self) -> str:
        """SHA-256 of the ONNX graph and the sequence length that shapes the embeddings."""
        digest = hashlib.sha256(f"max_seq_length={self.max_seq_length}".encode())
        digest.update((self.directory / MODEL_FILE).read_bytes())
        return digest.hexdigest()


def read_encoder_config(directory: Path) -> dict[str, Any]:
    config_path = directory / CONFIG_FILE
    missing = [n for n in (CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE) if not (directory / n).is_file()]
    if missing:
        raise ModelDirError(
            f"{directory} is not an ONNX encoder directory ({', '.join(missing)} missing); "
            "create it with 'shelver export --model MODEL_DIR'"
        )
    return json.loads(config_path.read_text())


def _load_tokenizer(directory: Path, config: dict[str, Any]) -> Any:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(directory / TOKENIZER_FILE))
    tokenizer.enable_truncation(max_length=int(config["max_seq_length"]))
    tokenizer.no_padding()  # OnnxEncoder pads each call's texts itself
    return tokenizer


def length_chunks(lengths: np.ndarray, most: int, call_tokens: int = CALL_TOKENS) -> list[slice]:
    """Model calls for texts sorted by token count: at most ``most`` texts each, and a new call
    wherever lengthening the current one (padding every row so far to the next text's length)
    would cost more tokens than a call does (``call_tokens``)."""
    cuts, start = [], 0
    for i in range(1, len(lengths)):
        if i - start >= most or (i - start) * (lengths[i] - lengths[i - 1]) > call_tokens:
            cuts.append(slice(start, i))
            start = i
    return [*cuts, slice(start, len(lengths))] if len(lengths) else []


def _load_session(path: Path, threads: int | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ConfigError("the ONNX encoder needs onnxruntime: pip install 'shelver[serve]'") from None
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    # idle worker threads spin by default, burning CPU that the web server or other jobs need
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _progress(parts: list[slice], progress: bool, total: int):
    if not progress or len(parts) <= 1:
        return parts
    from tqdm.auto import tqdm

    return tqdm(parts, desc=f"encoding {total:,} texts (onnx)", unit="batch", leave=False)
