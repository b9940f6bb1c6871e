"""From a resolved ``TrainConfig`` to a fitted ``HierarchicalClassifier``.

Stages plug in here, so ``shelver train`` and the Python API build models the same way:
fine-tune the encoder (``encoder.finetune``; its head is discarded), then fit the heads on the
new embeddings, joined with lexical features when ``lexical.enabled``. Settings left at ``"auto"``
(the defaults) are chosen on validation data by ``shelver.selection``.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from shelver.classifier import HierarchicalClassifier
from shelver.config import AUTO, EncoderConfig, TrainConfig
from shelver.data import LabeledData
from shelver.encoders import Encoder
from shelver.errors import ConfigError
from shelver.model_dir import TORCH_FREE_PREFIXES
from shelver.taxonomy import Taxonomy

log = logging.getLogger(__name__)


def build_model(
    config: TrainConfig, taxonomy: Taxonomy, progress: bool = True, encoder: Encoder | None = None
) -> HierarchicalClassifier:
    """An unfitted estimator with every parameter taken from ``config`` (no ``"auto"`` left);
    ``encoder``, an instance to use instead of building ``config.encoder.name`` (its cache shared)."""
    _check_resolved(config)
    encoder_options = (
        {}
        if config.encoder.name.startswith("hashing")
        else {"max_seq_length": config.encoder.max_seq_length, "batch_size": config.encoder.batch_size}
    )
    return HierarchicalClassifier(
        taxonomy=taxonomy,
        encoder=config.encoder.name if encoder is None else encoder,
        encoder_options=encoder_options,
        head=config.head.kind,
        router=config.head.router,
        C=config.head.C,
        class_weight=config.head.class_weight,
        max_iter=config.head.max_iter,
        random_state=config.seed,
        progress=progress,
        target_precision=config.decision.target_precision,
        delta=config.decision.delta,
        multi_label=config.decision.multi_label,
        lexical=config.lexical.enabled,
        lexical_options=config.lexical.options() if config.lexical.enabled else None,
    )


def train_model(
    config: TrainConfig,
    taxonomy: Taxonomy,
    data: LabeledData,
    progress: bool = True,
    valid: LabeledData | None = None,
    workdir: str | Path | None = None,
    encoder: Encoder | None = None,
) -> HierarchicalClassifier:
    """Fine-tune the encoder first when the configuration asks for it, fit the heads, then
    with ``valid`` calibrate on it (temperatures, and thresholds when a target precision is set).

    The fine-tuned encoder is written to ``workdir/encoder`` (checkpoints beside it, so an
    interrupted run resumes); the model directory copies it when the model is saved.
    ``encoder``: an instance of ``config.encoder.name`` to use as is (a shared embedding cache, as
    the benchmarks pass); a fine-tuning run builds its own.
    """
    if config.decision.target_precision is not None and valid is None:
        raise ConfigError(
            "a target precision needs validation data to choose thresholds on "
            "(never the training data): pass --valid FILE"
        )
    from shelver.selection import needs_selection, resolve_fixed, select_and_fit

    if wants_finetune(config.encoder, workdir):
        config = _with_finetuned_encoder(config, taxonomy, data, valid, workdir, progress)
        encoder = None
    config = resolve_fixed(config)
    # synthetic rows train but stay out of train_counts_: the report's bands count real rows
    if needs_selection(config):  # the head and class weights chosen on valid; selection_ says how
        model = select_and_fit(config, taxonomy, data, valid, progress, encoder)
    else:
        model = build_model(config, taxonomy, progress, encoder).fit(data.texts, data.y, source=data.source)
    return model.calibrate(valid.texts, valid.y, valid.source) if valid is not None else model


def resolved_config(config: TrainConfig, model: HierarchicalClassifier) -> TrainConfig:
    """``config`` with each ``"auto"`` replaced by what ``train_model`` chose for ``model``."""
    head = dataclasses.replace(
        config.head, kind=model.head, router=model.router, class_weight=model.class_weight
    )
    lexical = dataclasses.replace(config.lexical, enabled=bool(model.lexical))
    return dataclasses.replace(config, head=head, lexical=lexical)


def _check_resolved(config: TrainConfig) -> None:
    left = [
        key
        for key, value in (
            ("head.kind", config.head.kind),
            ("head.router", config.head.router),
            ("head.class_weight", config.head.class_weight),
            ("lexical.enabled", config.lexical.enabled),
        )
        if value == AUTO
    ]
    if left:
        raise ConfigError(
            f'{", ".join(left)} = "auto" is chosen on validation data by train_model; '
            "call shelver.training.train_model, or set a value (e.g. head.kind=flat)"
        )


def wants_finetune(encoder: EncoderConfig, workdir: str | Path | None) -> bool:
    """``encoder.finetune``, with "auto" meaning: a CUDA GPU is there and a work directory to fill."""
    if encoder.finetune != "auto":
        return bool(encoder.finetune)
    if workdir is None or encoder.name.startswith(TORCH_FREE_PREFIXES):  # nothing to fine-tune
        return False
    import torch

    found = torch.cuda.is_available()
    log.info("encoder.finetune=auto: %s", "a CUDA GPU is present, fine-tuning" if found else "no GPU, frozen")
    return found


def _with_finetuned_encoder(
    config: TrainConfig,
    taxonomy: Taxonomy,
    data: LabeledData,
    valid: LabeledData | None,
    workdir: str | Path | None,
    progress: bool,
) -> TrainConfig:
    from shelver.finetune import finetune_encoder

    if workdir is None:
        raise ConfigError("encoder.finetune=true needs a work directory for the encoder: pass workdir=...")
    result = finetune_encoder(
        config.encoder,
        taxonomy,
        data,
        Path(workdir) / "encoder",
        valid=valid,
        seed=config.seed,
        progress=progress,
    )
    encoder = dataclasses.replace(config.encoder, name=str(result.encoder_dir), finetune=False)
    return dataclasses.replace(config, encoder=encoder)
