"""``shelver export``: a model's encoder as ONNX with int8 weights, checked against PyTorch.

The graph takes the tokenizer's ids by keyword and returns mean-pooled, L2-normalised
embeddings, exactly what ``SentenceEncoder`` gives the heads. Weights are quantized to int8
*per channel*: per-tensor scales drift to a cosine of about 0.93 from the fp32 embeddings, per
channel keeps about 0.99. The export checks itself before it is written into the model
directory: the ONNX path (through the same features as ``predict``, lexical block included)
must predict the same paths as PyTorch on ``min_agreement`` of a validation sample, and its
embeddings must keep a mean cosine of ``MIN_COSINE`` to PyTorch's, or nothing is written and
the error gives the figures. Unattended runs may ask for the fp32 graph when int8 fails.

Needs torch and onnx (``pip install 'shelver[export]'``); the result runs with neither.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from shelver.calibration import median_words, title_like
from shelver.config import INT8_CHOICES, ExportStage
from shelver.encoders.onnx import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, OnnxEncoder
from shelver.errors import ShelverError
from shelver.model_dir import ONNX_DIR, load_model, record_export

if TYPE_CHECKING:
    from shelver.classifier import HierarchicalClassifier

# 18 is the newest opset every onnxruntime release of the last two years runs
OPSET = 18
POOLING_MODES = ("mean", "cls")
# below this mean cosine to PyTorch the graph is broken, not merely quantized (int8 keeps ~0.99)
MIN_COSINE = 0.95
FP32_FILE = "model.fp32.onnx"
# what each int8 method (ExportStage.int8) records as the export's quantization
INT8_METHODS = dict(
    zip(
        INT8_CHOICES,
        ("int8, per-token activations, per-channel weights", "dynamic int8, per channel"),
        strict=True,
    )
)
INT8 = INT8_METHODS[ExportStage.int8]
FP32 = "none (fp32)"
log = logging.getLogger(__name__)


class ExportError(ShelverError, ValueError):
    """The encoder cannot be exported, or its export disagrees with PyTorch."""


@dataclass(frozen=True)
class ExportCheck:
    """How the ONNX path compares with PyTorch on the validation sample."""

    n: int
    agreement: float
    cosine_mean: float
    cosine_min: float
    disagreements: list[dict[str, str]] = field(default_factory=list)
    # of the checked texts: titles agree more than queries do (benchmarks/results/int8_batching.md)
    median_words: float = 0.0

    def describe(self) -> str:
        line = (
            f"ONNX predictions match PyTorch on {self.agreement:.2%} of {self.n:,} texts "
            f"(embedding cosine mean {self.cosine_mean:.4f}, min {self.cosine_min:.4f})"
        )
        if title_like(self.median_words):
            line += (
                f"; the texts have a median of {self.median_words:.0f} words: if they are product "
                "titles, short queries agree less (check with --data of real queries)"
            )
        return line


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    check: ExportCheck
    size_bytes: int
    quantization: str
    seconds: float
    # the int8 graph's check when it failed and fp32 was written instead (``fallback_fp32``)
    int8_refused: ExportCheck | None = None


def export_onnx(
    model_dir: str | Path,
    texts: list[str] | None = None,
    *,
    sample: int = ExportStage.sample,
    min_agreement: float = ExportStage.min_agreement,
    quantize: bool = ExportStage.quantize,
    int8: str = ExportStage.int8,
    progress: bool = True,
    fallback_fp32: bool = False,
) -> ExportResult:
    """Export, quantize and check the encoder of ``model_dir``; write ``MODEL/onnx`` on success.

    ``texts`` are the validation sample (the model's validation split is best); without them
    the check uses texts built from the taxonomy's names. ``fallback_fp32``: when the int8 graph
    fails its check, check and write the fp32 graph instead, recording why int8 was refused
    (for unattended runs; by default a failed check stops the export). ``int8``: ``"per_token"``
    (``shelver.quantize``) or onnxruntime's ``"dynamic"`` quantization.
    """
    if int8 not in INT8_METHODS:
        raise ExportError(f"int8 is one of {', '.join(INT8_METHODS)}, got {int8!r}")
    started = time.perf_counter()
    root = Path(model_dir)
    model = load_model(root)
    encoder = _sentence_encoder(model)
    sample_texts = _sample(texts if texts else taxonomy_texts(model), sample)
    staging = root / f".{ONNX_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        built = _build(model, encoder, staging, sample_texts, int8 if quantize else None, progress)
        if fallback_fp32 and built.int8 and _failure(built.check, min_agreement):
            built = _fall_back_to_fp32(model, staging, sample_texts, built)
        _require(built.check, min_agreement, root)
        (staging / FP32_FILE).unlink(missing_ok=True)
        target = _replace_dir(staging, root / ONNX_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = (target / MODEL_FILE).stat().st_size
    _record(root, model, built, min_agreement)
    seconds = time.perf_counter() - started
    return ExportResult(target, built.check, size, built.quantization, seconds, built.int8_refused)


@dataclass(frozen=True)
class _Built:
    """The staged graph: its weights, its check, and the int8 check it replaced, if any."""

    info: dict[str, Any]
    quantization: str
    check: ExportCheck
    int8_refused: ExportCheck | None = None

    @property
    def int8(self) -> bool:
        return self.quantization in INT8_METHODS.values()


def _build(
    model: HierarchicalClassifier,
    encoder: Any,
    staging: Path,
    texts: list[str],
    int8: str | None,
    progress: bool,
) -> _Built:
    with _Steps(progress) as steps:
        steps.next("exporting the encoder to ONNX")
        info = _export_graph(encoder, staging)
        steps.next(f"quantizing to int8 ({int8.replace('_', '-')})" if int8 else "keeping fp32 weights")
        quantization = _finish_weights(staging, int8)
        _write_config(staging, {**info, "quantization": quantization})
        steps.next(f"checking ONNX against PyTorch on {len(texts):,} texts")
        return _Built(info, quantization, check_export(model, OnnxEncoder(staging), texts))


def _fall_back_to_fp32(
    model: HierarchicalClassifier, staging: Path, texts: list[str], int8: _Built
) -> _Built:
    log.warning("int8 export refused (%s); checking the fp32 graph instead", int8.check.describe())
    (staging / FP32_FILE).replace(staging / MODEL_FILE)
    _write_config(staging, {**int8.info, "quantization": FP32})
    check = check_export(model, OnnxEncoder(staging), texts)
    return _Built(int8.info, FP32, check, int8_refused=int8.check)


def _sentence_encoder(model: HierarchicalClassifier) -> Any:
    from shelver.encoders.sentence import SentenceEncoder

    inner = getattr(model.encoder_, "inner", model.encoder_)
    if not isinstance(inner, SentenceEncoder):
        raise ExportError(
            f"the model's encoder {model.encoder_.spec!r} is not a sentence-transformers model, "
            "so there is nothing to export: it already runs without torch ('shelver serve' takes it as is)"
        )
    return inner


def taxonomy_texts(model: HierarchicalClassifier) -> list[str]:
    """A fallback sample: every category and leaf name, and each 'category subcategory'."""
    texts = list(model.taxonomy_.categories)
    for path in model.taxonomy_.paths:
        texts += [path[-1], " ".join(path), f"{path[-1].lower()} for {path[0].lower()}"]
    return list(dict.fromkeys(texts))


def _sample(texts: list[str], n: int) -> list[str]:
    if len(texts) <= n:
        return list(texts)
    rows = np.sort(np.random.default_rng(0).choice(len(texts), size=n, replace=False))
    return [texts[i] for i in rows]


# ---- the graph --------------------------------------------------------------------------
# the order of _PooledEncoder.forward's arguments: the exporter names the graph's inputs by
# position, so the names must follow the signature, not the tokenizer's model_input_names
WRAPPER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _export_graph(encoder: Any, out: Path) -> dict[str, Any]:
    """Trace tokenizer ids -> pooled, normalised embeddings into ``out/model.fp32.onnx`` (``FP32_FILE``).

    The TorchScript exporter, not dynamo: on MiniLM (int8) it exported in a quarter of the time
    and its graph ran ~20% faster at batch 1 and at batch 64, with the same 0.992 cosine to
    PyTorch (figures and command in the commit that chose it).
    """
    st_model = encoder.model
    tokenizer = st_model.tokenizer
    pooling = _pooling_mode(st_model)
    transformer = st_model[0].auto_model.eval()
    names = input_names(tokenizer.model_input_names)
    example = tokenizer(
        ["a query to trace the graph with", "two"], padding=True, return_tensors="pt", truncation=True
    )
    with torch.no_grad(), _quiet(), _eager_attention(transformer):
        torch.onnx.export(
            _PooledEncoder(transformer, pooling).eval(),
            tuple(example[name] for name in names),
            str(out / FP32_FILE),
            input_names=names,
            output_names=["embeddings"],
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in names},
            opset_version=OPSET,
            dynamo=False,
        )
    tokenizer.backend_tokenizer.save(str(out / TOKENIZER_FILE))
    return {
        "max_seq_length": encoder.max_seq_length,
        "dim": encoder.dim,
        "inputs": names,
        "pooling": pooling,
        "normalize": True,
        "pad_id": int(tokenizer.pad_token_id),
        "pad_token": str(tokenizer.pad_token),
        "source_spec": encoder.spec,
        "opset": OPSET,
        "exporter": "torchscript",
        "torch_version": torch.__version__,
    }


def input_names(model_input_names: list[str]) -> list[str]:
    """The graph's inputs in the order ``_PooledEncoder.forward`` takes them."""
    if "input_ids" not in model_input_names or "attention_mask" not in model_input_names:
        raise ExportError(
            f"the tokenizer gives {model_input_names}; export needs input_ids and attention_mask: "
            "serve this model with its saved encoder"
        )
    return [name for name in WRAPPER_INPUTS if name in model_input_names]


@contextmanager
def _eager_attention(transformer: Any) -> Iterator[None]:
    """Eager attention adds the padding mask as a bias, with no data-dependent branch for the
    tracer to freeze (transformers' SDPA path may drop a mask it sees as all ones)."""
    before = transformer.config._attn_implementation
    _set_attention(transformer, "eager")
    try:
        yield
    finally:
        if before is not None:
            _set_attention(transformer, before)


def _set_attention(transformer: Any, implementation: str) -> None:
    if hasattr(transformer, "set_attn_implementation"):
        transformer.set_attn_implementation(implementation)
    else:  # older transformers read it from the config on every call
        transformer.config._attn_implementation = implementation


def _pooling_mode(st_model: Any) -> str:
    pooling = next((m for m in st_model if type(m).__name__ == "Pooling"), None)
    mode = getattr(pooling, "pooling_mode", None)
    if mode is None and pooling is not None:  # older sentence-transformers: one flag per mode
        config = pooling.get_config_dict()
        mode = "cls" if config.get("pooling_mode_cls_token") else "mean"
    if mode not in POOLING_MODES:
        raise ExportError(
            f"the encoder pools with {mode!r}; export supports {', '.join(POOLING_MODES)} pooling: "
            "serve this model with its saved encoder or fine-tune one with mean pooling"
        )
    return str(mode)


class _PooledEncoder(torch.nn.Module):
    """The transformer, pooled and normalised as ``SentenceEncoder`` does, taking keywords."""

    def __init__(self, transformer: torch.nn.Module, pooling: str) -> None:
        super().__init__()
        self.transformer = transformer
        self.pooling = pooling

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask, **extra)[0]
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, p=2.0, dim=1)


def _finish_weights(staging: Path, int8: str | None) -> str:
    """Write ``model.onnx`` (int8 by ``int8``'s method, or fp32 when None); the fp32 graph stays
    beside it until the check has passed."""
    fp32 = staging / FP32_FILE
    if int8 is None:
        fp32.rename(staging / MODEL_FILE)
        return FP32
    from shelver.quantize import QUANTIZERS

    with _quiet():
        QUANTIZERS[int8](fp32, staging / MODEL_FILE)
    return INT8_METHODS[int8]


# ---- the check --------------------------------------------------------------------------
def check_export(model: HierarchicalClassifier, onnx_encoder: Any, texts: list[str]) -> ExportCheck:
    """Paths predicted through PyTorch and through ONNX, compared text by text.

    Both go through the heads' whole input, as ``predict`` does: a lexical model's heads take
    the embedding joined with the TF-IDF block of the same texts.
    """
    reference = model.encoder_.encode(texts)
    exported = onnx_encoder.encode(texts)
    _, leaves_ref = model.decode(*model.head_proba(model.join(reference, texts)))
    _, leaves_onnx = model.decode(*model.head_proba(model.join(exported, texts)))
    cosine = (reference * exported).sum(axis=1)
    differ = np.flatnonzero(leaves_ref != leaves_onnx)
    paths = model.taxonomy_.paths
    examples = [
        {
            "text": texts[i],
            "pytorch": " > ".join(paths[leaves_ref[i]]),
            "onnx": " > ".join(paths[leaves_onnx[i]]),
        }
        for i in differ[:5]
    ]
    return ExportCheck(
        n=len(texts),
        agreement=float(1.0 - len(differ) / max(len(texts), 1)),
        cosine_mean=float(cosine.mean()) if len(texts) else 1.0,
        cosine_min=float(cosine.min()) if len(texts) else 1.0,
        disagreements=examples,
        median_words=median_words(texts),
    )


def _failure(check: ExportCheck, min_agreement: float) -> str | None:
    """Why the check fails, or None. The cosine bar holds whatever the agreement: a broken
    graph (inputs mislabelled, zero embeddings) can still agree where other features decide."""
    if check.cosine_mean < MIN_COSINE:
        return (
            f"{check.describe()}: the mean embedding cosine is below {MIN_COSINE}, so the graph "
            "computes something else than PyTorch whatever the agreement"
        )
    if check.agreement < min_agreement:
        example = check.disagreements[0] if check.disagreements else {}
        return (
            f"{check.describe()}, below the required {min_agreement:.2%} (e.g. {example.get('text')!r}: "
            f"PyTorch {example.get('pytorch')!r}, ONNX {example.get('onnx')!r})"
        )
    return None


def _require(check: ExportCheck, min_agreement: float, root: Path) -> None:
    failure = _failure(check, min_agreement)
    if failure is not None:
        raise ExportError(
            f"{failure}; {root / ONNX_DIR} was not written: try --no-quantize, or check on more "
            "texts with --data; if fp32 fails too, report it with these figures"
        )


# ---- writing ----------------------------------------------------------------------------
def _write_config(staging: Path, info: dict[str, Any]) -> None:
    (staging / CONFIG_FILE).write_text(json.dumps(info, indent=2) + "\n")


def _replace_dir(staging: Path, target: Path) -> Path:
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)
    return target


def _record(root: Path, model: HierarchicalClassifier, built: _Built, min_agreement: float) -> None:
    import onnxruntime

    from shelver import __version__

    files = [f"{ONNX_DIR}/{name}" for name in (CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE)]
    info = {
        "directory": ONNX_DIR,
        "quantization": built.quantization,
        "source_fingerprint": model.encoder_.fingerprint(),
        "check": {**asdict(built.check), "min_agreement": min_agreement},
        "onnxruntime_version": onnxruntime.__version__,
        "shelver_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if built.int8_refused is not None:
        reason = _failure(built.int8_refused, min_agreement)
        info["int8_refused"] = {**asdict(built.int8_refused), "reason": reason}
    record_export(root, "onnx", files, info)


class _Steps:
    """A progress bar over the export's three steps."""

    def __init__(self, progress: bool) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=3, desc="export", disable=not progress, leave=False)
        self.started = False

    def next(self, desc: str) -> None:
        if self.started:
            self.bar.update()
        self.started = True
        self.bar.set_description(desc)

    def __enter__(self) -> _Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


class _quiet:
    """Silences the exporters' chatter (warnings, root-logger notes) for the duration."""

    def __enter__(self) -> None:
        import warnings

        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.simplefilter("ignore")
        self.loggers = [logging.root, logging.getLogger("torch.onnx"), logging.getLogger("torch.export")]
        self.levels = [logger.level for logger in self.loggers]
        for logger in self.loggers:
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        for logger, level in zip(self.loggers, self.levels, strict=True):
            logger.setLevel(level)
        self.warnings.__exit__(*exc)
