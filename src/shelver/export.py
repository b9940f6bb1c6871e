"""``shelver export``: a model's encoder as ONNX with int8 weights, checked against PyTorch.

The graph takes the tokenizer's ids by keyword and returns mean-pooled, L2-normalised
embeddings, exactly what ``SentenceEncoder`` gives the heads. Weights are quantized to int8
*per channel*: per-tensor scales drift to a cosine of about 0.93 from the fp32 embeddings, per
channel keeps about 0.99. The export checks itself before it is written into the model
directory: the ONNX path must predict the same paths as PyTorch on ``min_agreement`` of a
validation sample, or nothing is written and the error gives the figures.

Needs torch and onnx (``pip install 'shelver[export]'``); the result runs with neither.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from shelver.encoders.onnx import CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE, OnnxEncoder
from shelver.errors import ShelverError
from shelver.model_dir import ONNX_DIR, load_model, record_export

if TYPE_CHECKING:
    from shelver.classifier import HierarchicalClassifier

# 18 is the newest opset every onnxruntime release of the last two years runs
OPSET = 18
# enough rows that 99.5% agreement means something, few enough to check in seconds
DEFAULT_SAMPLE = 2000
DEFAULT_MIN_AGREEMENT = 0.995
POOLING_MODES = ("mean", "cls")


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

    def describe(self) -> str:
        return (
            f"ONNX predictions match PyTorch on {self.agreement:.2%} of {self.n:,} texts "
            f"(embedding cosine mean {self.cosine_mean:.4f}, min {self.cosine_min:.4f})"
        )


@dataclass(frozen=True)
class ExportResult:
    directory: Path
    check: ExportCheck
    size_bytes: int
    quantization: str
    seconds: float


def export_onnx(
    model_dir: str | Path,
    texts: list[str] | None = None,
    *,
    sample: int = DEFAULT_SAMPLE,
    min_agreement: float = DEFAULT_MIN_AGREEMENT,
    quantize: bool = True,
    progress: bool = True,
) -> ExportResult:
    """Export, quantize and check the encoder of ``model_dir``; write ``MODEL/onnx`` on success.

    ``texts`` are the validation sample (the model's validation split is best); without them
    the check uses texts built from the taxonomy's names.
    """
    started = time.perf_counter()
    root = Path(model_dir)
    model = load_model(root)
    encoder = _sentence_encoder(model)
    sample_texts = _sample(texts if texts else taxonomy_texts(model), sample)
    staging = root / f".{ONNX_DIR}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        with _Steps(progress) as steps:
            steps.next("exporting the encoder to ONNX")
            info = _export_graph(encoder, staging)
            steps.next("quantizing weights to int8 (per channel)" if quantize else "keeping fp32 weights")
            quantization = _finish_weights(staging, quantize)
            _write_config(staging, {**info, "quantization": quantization})
            steps.next(f"checking ONNX against PyTorch on {len(sample_texts):,} texts")
            check = check_export(model, OnnxEncoder(staging), sample_texts)
        _require(check, min_agreement, root)
        target = _replace_dir(staging, root / ONNX_DIR)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = (target / MODEL_FILE).stat().st_size
    _record(root, model, check, quantization, min_agreement)
    return ExportResult(target, check, size, quantization, time.perf_counter() - started)


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
def _export_graph(encoder: Any, out: Path) -> dict[str, Any]:
    """Trace tokenizer ids -> pooled, normalised embeddings into ``out/model.fp32.onnx``."""
    st_model = encoder.model
    tokenizer = st_model.tokenizer
    pooling = _pooling_mode(st_model)
    transformer = st_model[0].auto_model.eval()
    names = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    wrapper = _PooledEncoder(transformer, pooling).eval()
    example = tokenizer(
        ["a query to trace the graph with", "two"], padding=True, return_tensors="pt", truncation=True
    )
    kwargs = {name: example[name] for name in names}
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence", max=encoder.max_seq_length)
    with torch.no_grad(), _quiet():
        torch.onnx.export(
            wrapper,
            (),
            str(out / "model.fp32.onnx"),
            kwargs=kwargs,
            input_names=names,
            output_names=["embeddings"],
            dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
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
        "torch_version": torch.__version__,
    }


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


def _finish_weights(staging: Path, quantize: bool) -> str:
    fp32 = staging / "model.fp32.onnx"
    if not quantize:
        fp32.rename(staging / MODEL_FILE)
        return "none (fp32)"
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(str(fp32), str(staging / MODEL_FILE), per_channel=True, weight_type=QuantType.QInt8)
    fp32.unlink()
    return "dynamic int8, per channel"


# ---- the check --------------------------------------------------------------------------
def check_export(model: HierarchicalClassifier, onnx_encoder: Any, texts: list[str]) -> ExportCheck:
    """Paths predicted through PyTorch and through ONNX, compared text by text."""
    reference = model.encoder_.encode(texts)
    exported = onnx_encoder.encode(texts)
    _, leaves_ref = model.decode(*model.head_proba(reference))
    _, leaves_onnx = model.decode(*model.head_proba(exported))
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
    )


def _require(check: ExportCheck, min_agreement: float, root: Path) -> None:
    if check.agreement >= min_agreement:
        return
    example = check.disagreements[0] if check.disagreements else {}
    raise ExportError(
        f"{check.describe()}, below the required {min_agreement:.2%}, so {root / ONNX_DIR} was not "
        f"written (e.g. {example.get('text')!r}: PyTorch {example.get('pytorch')!r}, ONNX "
        f"{example.get('onnx')!r}); try --no-quantize, or check on more texts with --data"
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


def _record(
    root: Path, model: HierarchicalClassifier, check: ExportCheck, quantization: str, min_agreement: float
) -> None:
    import onnxruntime

    from shelver import __version__

    files = [f"{ONNX_DIR}/{name}" for name in (CONFIG_FILE, MODEL_FILE, TOKENIZER_FILE)]
    info = {
        "directory": ONNX_DIR,
        "quantization": quantization,
        "source_fingerprint": model.encoder_.fingerprint(),
        "check": {**asdict(check), "min_agreement": min_agreement},
        "onnxruntime_version": onnxruntime.__version__,
        "shelver_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
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
